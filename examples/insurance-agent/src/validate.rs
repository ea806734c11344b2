//! Input bounds: every amount and every text field a client sends has a
//! limit, and a value outside it is refused with a 422 problem naming the
//! field (`"field": "first_name"`), before anything is stored.
//!
//! Amounts are bounded so that no sum the application computes can
//! overflow: [`MAX_MINOR`] is 10¹³ minor units (10¹¹ rupees), and sums are
//! taken in two halves ([`sum_minor_sql`]) that each stay far inside `i64`
//! and are recombined in `i128`.

use crate::api::ApiError;

/// The largest amount accepted, in minor units (10¹³, i.e. 100 billion in
/// major units). Large enough for any premium or sum assured, small enough
/// that 900 000 of them still add up inside `i64`.
pub const MAX_MINOR: i64 = 10_000_000_000_000;

/// Short names, codes, numbers (agent code, licence, policy number).
pub const SHORT: usize = 64;
/// Names of people, products and businesses.
pub const NAME: usize = 200;
/// Email addresses (RFC 5321's limit).
pub const EMAIL: usize = 254;
/// Passwords (argon2 hashes any length; bounded so a body cannot make one
/// hash cost more than another).
pub const PASSWORD: usize = 1024;
/// Items in a list field (regions, riders).
pub const LIST: usize = 50;

/// `field` holds `value`, trimmed: 1 to `max` characters, no control
/// characters.
///
/// ```
/// use insurance_agent::validate::text;
///
/// assert_eq!(text("name", "  Asha ", 10).unwrap(), "Asha");
/// assert!(text("name", "", 10).is_err());
/// assert!(text("name", &"x".repeat(11), 10).is_err());
/// ```
pub fn text(field: &'static str, value: &str, max: usize) -> Result<String, ApiError> {
    let v = value.trim();
    if v.is_empty() {
        return Err(ApiError::invalid_field(
            field,
            format!("{field} must not be empty"),
        ));
    }
    bounded(field, v, max)?;
    if v.chars().any(char::is_control) {
        return Err(ApiError::invalid_field(
            field,
            format!("{field} must not contain control characters"),
        ));
    }
    Ok(v.to_owned())
}

/// Like [`text`] for an optional field; an empty string counts as absent.
pub fn opt_text(
    field: &'static str,
    value: Option<&str>,
    max: usize,
) -> Result<Option<String>, ApiError> {
    match value.map(str::trim) {
        None | Some("") => Ok(None),
        Some(v) => text(field, v, max).map(Some),
    }
}

/// `value` (kept as given, e.g. a password) is at most `max` characters.
///
/// ```
/// use insurance_agent::validate::{bounded, PASSWORD};
///
/// assert!(bounded("password", "correct horse", PASSWORD).is_ok());
/// assert!(bounded("password", &"x".repeat(PASSWORD + 1), PASSWORD).is_err());
/// ```
pub fn bounded(field: &'static str, value: &str, max: usize) -> Result<(), ApiError> {
    let n = value.chars().count();
    if n > max {
        return Err(ApiError::invalid_field(
            field,
            format!("{field} must be at most {max} characters (got {n})"),
        ));
    }
    Ok(())
}

/// A list of at most [`LIST`] texts of at most `max` characters each.
pub fn text_list(
    field: &'static str,
    values: &[String],
    max: usize,
) -> Result<Vec<String>, ApiError> {
    if values.len() > LIST {
        return Err(ApiError::invalid_field(
            field,
            format!("{field} must have at most {LIST} items"),
        ));
    }
    values.iter().map(|v| text(field, v, max)).collect()
}

/// An amount in minor units: positive and at most [`MAX_MINOR`].
///
/// ```
/// use insurance_agent::validate::{money, MAX_MINOR};
///
/// assert!(money("premium_minor", 1).is_ok());
/// assert!(money("premium_minor", 0).is_err());
/// assert!(money("premium_minor", MAX_MINOR + 1).is_err());
/// ```
pub fn money(field: &'static str, value: i64) -> Result<i64, ApiError> {
    if !(1..=MAX_MINOR).contains(&value) {
        return Err(ApiError::invalid_field(
            field,
            format!("{field} must be between 1 and {MAX_MINOR} (minor units)"),
        ));
    }
    Ok(value)
}

/// An email address: at most [`EMAIL`] characters with one `@` inside.
pub fn email(field: &'static str, value: &str) -> Result<String, ApiError> {
    let v = text(field, value, EMAIL)?;
    match v.split_once('@') {
        Some((local, domain))
            if !local.is_empty() && !domain.is_empty() && !domain.contains('@') =>
        {
            Ok(v)
        }
        _ => Err(ApiError::invalid_field(
            field,
            format!("{field} is not a valid email address"),
        )),
    }
}

/// SQL summing the minor-unit `column` without overflow on either backend:
/// `(high, low)` halves (`column / 10⁹` and `column % 10⁹`), each a `BIGINT`
/// far from overflowing; combine them with [`combine`].
pub fn sum_minor_sql(column: &str) -> String {
    format!(
        "CAST(coalesce(sum({column} / 1000000000), 0) AS BIGINT), \
         CAST(coalesce(sum({column} % 1000000000), 0) AS BIGINT)"
    )
}

/// `high × 10⁹ + low`, saturating at `i64::MAX` (unreachable with amounts
/// within [`MAX_MINOR`] and fewer than 900 000 rows).
pub fn combine((high, low): (i64, i64)) -> i64 {
    let total = i128::from(high) * 1_000_000_000 + i128::from(low);
    i64::try_from(total).unwrap_or(if total < 0 { i64::MIN } else { i64::MAX })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_name_the_field() {
        let e = text("last_name", &"a".repeat(201), NAME).unwrap_err();
        assert_eq!(e.0.status, 422);
        assert_eq!(e.0.extensions["field"], "last_name");
        assert!(e.0.detail.contains("at most 200"), "{}", e.0.detail);
        let e = money("amount", i64::MAX).unwrap_err();
        assert_eq!(e.0.extensions["field"], "amount");
        assert!(text("name", "a\u{0}b", NAME).is_err());
        assert!(email("email", "a@b@c").is_err());
        assert_eq!(email("email", " a@b.in ").unwrap(), "a@b.in");
    }

    #[test]
    fn halves_recombine_exactly() {
        let x: i64 = 9_123_456_789_012;
        assert_eq!(combine((x / 1_000_000_000, x % 1_000_000_000)), x);
        assert_eq!(combine((i64::MAX, 0)), i64::MAX);
    }
}

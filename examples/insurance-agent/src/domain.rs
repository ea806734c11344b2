//! The insurance domain's value types: closed sets of states as enums
//! stored as text, money in integer minor units.

use serde::{Deserialize, Serialize};

/// Declares a closed set of text values: serde, `as_str`, `FromStr` and an
/// OpenAPI schema listing the values.
macro_rules! text_enum {
    ($(#[$m:meta])* $name:ident { $($(#[$vm:meta])* $variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
        pub enum $name {
            $($(#[$vm])* #[serde(rename = $text)] $variant),+
        }

        impl $name {
            /// Every value.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The stored and JSON form.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }

        impl std::str::FromStr for $name {
            type Err = String;

            fn from_str(s: &str) -> Result<Self, String> {
                match s {
                    $($text => Ok($name::$variant),)+
                    other => Err(format!(
                        "{other:?} is not a valid {}: use one of {}",
                        stringify!($name),
                        [$($text),+].join(", ")
                    )),
                }
            }
        }

        impl TryFrom<String> for $name {
            type Error = String;

            fn try_from(s: String) -> Result<Self, String> {
                s.parse()
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

text_enum!(
    /// An agent's compliance standing.
    ComplianceStatus {
        /// Documents not reviewed yet.
        Pending = "pending",
        /// Licence and training in order.
        Compliant = "compliant",
        /// Something is missing or expired.
        NonCompliant = "non_compliant",
        /// Barred from selling.
        Suspended = "suspended",
    }
);

text_enum!(
    /// Who a customer is.
    CustomerType {
        /// A person.
        Individual = "individual",
        /// A household.
        Family = "family",
        /// A company.
        Business = "business",
    }
);

text_enum!(
    /// Where a customer is in their relationship with the agency.
    LifecycleStage {
        /// Not a customer yet.
        Prospect = "prospect",
        /// First policy recently issued.
        New = "new",
        /// Holds active policies.
        Active = "active",
        /// Showing signs of leaving.
        AtRisk = "at_risk",
        /// Left.
        Churned = "churned",
    }
);

text_enum!(
    /// Know-your-customer verification.
    KycStatus {
        /// Not verified yet.
        Pending = "pending",
        /// Verified.
        Verified = "verified",
        /// Verification failed.
        Rejected = "rejected",
    }
);

text_enum!(
    /// The customer's risk appetite.
    RiskProfile {
        /// Conservative.
        Low = "low",
        /// Balanced.
        Medium = "medium",
        /// Aggressive.
        High = "high",
    }
);

/// An amount of money in minor units (paise for INR): exact, never floating point.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Money {
    /// Minor units (1 INR = 100).
    pub minor: i64,
    /// ISO 4217 code.
    pub currency: Currency,
}

text_enum!(
    /// Supported currencies.
    Currency {
        /// Indian rupee (the default).
        Inr = "INR",
        /// US dollar.
        Usd = "USD",
    }
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_enums_round_trip_and_refuse_unknown_values() {
        for s in LifecycleStage::ALL {
            assert_eq!(s.as_str().parse::<LifecycleStage>(), Ok(*s));
        }
        let err = "gold".parse::<RiskProfile>().unwrap_err();
        assert!(err.contains("low, medium, high"), "{err}");
        assert_eq!(
            serde_json::to_string(&LifecycleStage::AtRisk).unwrap(),
            "\"at_risk\""
        );
    }
}

text_enum!(
    /// How often a premium is due.
    PremiumFrequency {
        /// Every month.
        Monthly = "monthly",
        /// Every three months.
        Quarterly = "quarterly",
        /// Every six months.
        HalfYearly = "half_yearly",
        /// Every year.
        Yearly = "yearly",
    }
);

impl PremiumFrequency {
    /// Months between two premiums.
    pub fn months(self) -> u32 {
        match self {
            Self::Monthly => 1,
            Self::Quarterly => 3,
            Self::HalfYearly => 6,
            Self::Yearly => 12,
        }
    }
}

text_enum!(
    /// Where a policy is in its life.
    PolicyStatus {
        /// Quoted, not issued.
        Quoted = "quoted",
        /// Issued and in force.
        Active = "active",
        /// Premiums not paid.
        Lapsed = "lapsed",
        /// Ran its term.
        Matured = "matured",
        /// Given up by the customer.
        Surrendered = "surrendered",
    }
);

impl PolicyStatus {
    /// Whether a policy may go from `self` to `to` (issuing is its own step).
    pub fn may_become(self, to: PolicyStatus) -> bool {
        use PolicyStatus as S;
        matches!(
            (self, to),
            (S::Active, S::Lapsed | S::Matured | S::Surrendered)
                | (S::Lapsed, S::Active | S::Surrendered)
        )
    }
}

text_enum!(
    /// A payment's state.
    PaymentStatus {
        /// Due, not paid.
        Pending = "pending",
        /// Paid.
        Completed = "completed",
        /// Attempted and failed.
        Failed = "failed",
        /// Paid, then returned.
        Refunded = "refunded",
    }
);

text_enum!(
    /// How a premium was paid.
    PaymentMethod {
        /// UPI.
        Upi = "upi",
        /// Card.
        Card = "card",
        /// Net banking.
        NetBanking = "net_banking",
        /// Cheque.
        Cheque = "cheque",
        /// Cash.
        Cash = "cash",
    }
);

text_enum!(
    /// Why a commission was earned.
    CommissionKind {
        /// A premium in the policy's first year.
        FirstYear = "first_year",
        /// A later premium.
        Renewal = "renewal",
        /// A bonus on top (tenant setting).
        Bonus = "bonus",
    }
);

text_enum!(
    /// A commission's state.
    CommissionStatus {
        /// Earned, not paid out.
        Pending = "pending",
        /// Paid out to the agent.
        Paid = "paid",
        /// Cancelled (the payment was refunded).
        Cancelled = "cancelled",
    }
);

/// Commission rates in basis points (1 % = 100), from the tenant setting
/// `commission_rates` (`{"first_year_bp": 2500, "renewal_bp": 750, "bonus_bp": 0}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct CommissionRates {
    /// Rate on first-year premiums.
    pub first_year_bp: i64,
    /// Rate on renewal premiums.
    pub renewal_bp: i64,
    /// Extra rate on every premium (0 = no bonus).
    pub bonus_bp: i64,
}

impl Default for CommissionRates {
    fn default() -> Self {
        Self {
            first_year_bp: 2500,
            renewal_bp: 750,
            bonus_bp: 0,
        }
    }
}

impl CommissionRates {
    /// The rates in a tenant's settings (defaults when absent; a malformed
    /// setting is an error, never a silent default).
    pub fn of(settings: &serde_json::Value) -> Result<Self, String> {
        match settings.get("commission_rates") {
            None | Some(serde_json::Value::Null) => Ok(Self::default()),
            Some(v) => {
                let r: Self = serde_json::from_value(v.clone())
                    .map_err(|e| format!("tenant setting commission_rates is invalid: {e}"))?;
                for bp in [r.first_year_bp, r.renewal_bp, r.bonus_bp] {
                    if !(0..=10_000).contains(&bp) {
                        return Err(
                            "commission rates must be between 0 and 10000 basis points".into()
                        );
                    }
                }
                Ok(r)
            }
        }
    }
}

/// `amount × bp / 10 000`, rounded half up, in integer minor units.
pub fn apply_bp(amount_minor: i64, bp: i64) -> i64 {
    (i128::from(amount_minor) * i128::from(bp) + 5_000)
        .div_euclid(10_000)
        .try_into()
        .unwrap_or(i64::MAX)
}

#[cfg(test)]
mod money_tests {
    use super::*;

    #[test]
    fn commissions_are_exact_and_round_half_up() {
        assert_eq!(apply_bp(1_000_000, 2500), 250_000);
        assert_eq!(apply_bp(1, 5000), 1); // 0.5 paise rounds up
        assert_eq!(apply_bp(1, 4999), 0);
        assert_eq!(apply_bp(i64::MAX, 10_000), i64::MAX);
        assert!(
            CommissionRates::of(&serde_json::json!({"commission_rates": {"renewal_bp": 20000}}))
                .is_err()
        );
        assert_eq!(
            CommissionRates::of(&serde_json::json!({})).unwrap(),
            CommissionRates::default()
        );
    }

    #[test]
    fn policy_transitions_follow_the_table() {
        assert!(PolicyStatus::Active.may_become(PolicyStatus::Lapsed));
        assert!(PolicyStatus::Lapsed.may_become(PolicyStatus::Active));
        assert!(!PolicyStatus::Matured.may_become(PolicyStatus::Active));
        assert!(
            !PolicyStatus::Quoted.may_become(PolicyStatus::Active),
            "issuing is its own step"
        );
    }
}

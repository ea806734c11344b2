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

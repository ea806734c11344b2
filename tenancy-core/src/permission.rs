//! Roles and permissions: [`Role`], [`Permission`] and the role defaults in
//! [`RolePermissions`].
//!
//! A permission is `resource:action` (`policies:create`). Grants may use `*`
//! for either part (`policies:*`, `*:read`) or be `*` alone (everything).
//! Required permissions are always concrete.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A member's role in a tenant, from least to most privileged.
///
/// ```
/// use tenancy_core::Role;
///
/// assert!(Role::Admin > Role::Manager);
/// assert_eq!("viewer".parse::<Role>()?, Role::Viewer);
/// # Ok::<(), tenancy_core::PermissionError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Reads.
    Viewer,
    /// Reads and writes.
    Member,
    /// Reads, writes and deletes.
    Manager,
    /// Everything, including managing the tenant itself.
    Admin,
}

impl Role {
    /// Every role, least privileged first.
    pub const ALL: [Role; 4] = [Role::Viewer, Role::Member, Role::Manager, Role::Admin];

    /// The role's name as used in text and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Member => "member",
            Role::Manager => "manager",
            Role::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = PermissionError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or(PermissionError::UnknownRole)
    }
}

/// Why a string is not a valid [`Permission`] or [`Role`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PermissionError {
    /// Not of the form `resource:action` (or `*`).
    #[error(
        "permission must look like \"resource:action\" (a-z, 0-9, '_', '-', or '*' for either part)"
    )]
    Malformed,
    /// Not one of `viewer`, `member`, `manager`, `admin`.
    #[error("unknown role: use viewer, member, manager or admin")]
    UnknownRole,
}

/// A permission grant: `resource:action`, either part possibly `*`, or `*`.
///
/// ```
/// use tenancy_core::Permission;
///
/// let grant: Permission = "policies:*".parse()?;
/// assert!(grant.allows("policies:create"));
/// assert!(!grant.allows("customers:create"));
/// assert!("*".parse::<Permission>()?.allows("anything:at-all"));
/// assert!("policies".parse::<Permission>().is_err());
/// # Ok::<(), tenancy_core::PermissionError>(())
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Permission(Arc<str>);

const MAX_PERMISSION_LEN: usize = 128;

fn valid_part(p: &str) -> bool {
    p == "*"
        || (!p.is_empty()
            && p.bytes().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-' || b == b'.'
            }))
}

impl Permission {
    /// Validates and wraps a grant.
    pub fn new(s: &str) -> Result<Self, PermissionError> {
        if s.len() > MAX_PERMISSION_LEN {
            return Err(PermissionError::Malformed);
        }
        if s != "*" {
            let (resource, action) = s.split_once(':').ok_or(PermissionError::Malformed)?;
            if !valid_part(resource) || !valid_part(action) {
                return Err(PermissionError::Malformed);
            }
        }
        Ok(Self(s.into()))
    }

    /// The grant as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether this grant allows the concrete permission `required`.
    ///
    /// A malformed `required` is never allowed (fail closed), and a wildcard
    /// in `required` is matched literally, never as a pattern.
    pub fn allows(&self, required: &str) -> bool {
        if &*self.0 == "*" {
            return required.split_once(':').is_some();
        }
        let (Some((gr, ga)), Some((rr, ra))) = (self.0.split_once(':'), required.split_once(':'))
        else {
            return false;
        };
        (gr == "*" || gr == rr) && (ga == "*" || ga == ra)
    }
}

impl FromStr for Permission {
    type Err = PermissionError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl fmt::Display for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Permission({})", &self.0)
    }
}

impl Serialize for Permission {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Permission {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        Self::new(&s).map_err(serde::de::Error::custom)
    }
}

/// The permissions each role grants.
///
/// Defaults (replace any role with [`RolePermissions::set`]):
///
/// | role | grants |
/// |---|---|
/// | admin | `*` |
/// | manager | `*:read`, `*:create`, `*:update`, `*:delete`, `*:export` |
/// | member | `*:read`, `*:create`, `*:update` |
/// | viewer | `*:read` |
///
/// ```
/// use tenancy_core::{Permission, Role, RolePermissions};
///
/// let mut roles = RolePermissions::default();
/// assert!(roles.allows(Role::Member, "customers:update"));
/// assert!(!roles.allows(Role::Member, "customers:delete"));
///
/// roles.set(Role::Viewer, vec!["reports:read".parse()?]);
/// assert!(!roles.allows(Role::Viewer, "customers:read"));
/// # Ok::<(), tenancy_core::PermissionError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RolePermissions {
    grants: HashMap<Role, Arc<[Permission]>>,
}

impl Default for RolePermissions {
    fn default() -> Self {
        let p = |s: &'static str| Permission(s.into());
        let mut grants = HashMap::new();
        grants.insert(Role::Admin, Arc::from(vec![p("*")]));
        grants.insert(
            Role::Manager,
            Arc::from(vec![
                p("*:read"),
                p("*:create"),
                p("*:update"),
                p("*:delete"),
                p("*:export"),
            ]),
        );
        grants.insert(
            Role::Member,
            Arc::from(vec![p("*:read"), p("*:create"), p("*:update")]),
        );
        grants.insert(Role::Viewer, Arc::from(vec![p("*:read")]));
        Self { grants }
    }
}

impl RolePermissions {
    /// Replaces the grants of `role`.
    pub fn set(&mut self, role: Role, grants: Vec<Permission>) -> &mut Self {
        self.grants.insert(role, Arc::from(grants));
        self
    }

    /// The grants of `role`.
    pub fn grants(&self, role: Role) -> &[Permission] {
        self.grants.get(&role).map(|g| &g[..]).unwrap_or(&[])
    }

    /// Whether `role` alone allows `required`.
    pub fn allows(&self, role: Role, required: &str) -> bool {
        self.grants(role).iter().any(|g| g.allows(required))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grant_matching_table() {
        for (grant, required, want) in [
            ("*", "policies:create", true),
            ("*", "garbage", false),
            ("policies:*", "policies:create", true),
            ("policies:*", "policy:create", false),
            ("*:read", "customers:read", true),
            ("*:read", "customers:update", false),
            ("policies:create", "policies:create", true),
            ("policies:create", "policies:created", false),
            ("policies:create", "policies:*", false),
            ("policies:create", "", false),
        ] {
            let g = Permission::new(grant).unwrap();
            assert_eq!(g.allows(required), want, "{grant} vs {required}");
        }
    }

    #[test]
    fn malformed_grants_refused() {
        for bad in ["", "a", ":", "a:", ":b", "A:b", "a:b:c", "a b:c", "**"] {
            assert_eq!(
                Permission::new(bad),
                Err(PermissionError::Malformed),
                "{bad:?}"
            );
        }
        assert!(Permission::new(&format!("a:{}", "b".repeat(200))).is_err());
    }

    #[test]
    fn role_defaults_table() {
        let roles = RolePermissions::default();
        let table = [
            ("customers:read", [true, true, true, true]),
            ("customers:create", [false, true, true, true]),
            ("customers:update", [false, true, true, true]),
            ("customers:delete", [false, false, true, true]),
            ("customers:export", [false, false, true, true]),
            ("members:invite", [false, false, false, true]),
        ];
        for (perm, want) in table {
            for (role, expected) in Role::ALL.into_iter().zip(want) {
                assert_eq!(roles.allows(role, perm), expected, "{role} {perm}");
            }
        }
    }
}

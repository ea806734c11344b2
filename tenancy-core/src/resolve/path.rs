use std::sync::Arc;

use super::{RequestView, Strategy};
use crate::store::TenantRef;
use crate::{TenantError, TenantSlug};

/// Names the tenant by a path prefix: `/t/{slug}/...` (prefix configurable).
///
/// The segment after the prefix must be a valid slug as it appears on the
/// wire — percent-encoded or traversal segments such as `..` or `%2e%2e` are
/// [`TenantError::InvalidSlug`], never decoded into something else. Paths
/// outside the prefix do not match.
///
/// ```
/// use tenancy_core::resolve::{PathPrefixStrategy, SimpleRequest, Strategy};
/// use tenancy_core::store::TenantRef;
///
/// let s = PathPrefixStrategy::new("t");
/// assert_eq!(
///     s.identify(&SimpleRequest::new("/t/acme/policies"))?,
///     Some(TenantRef::Slug("acme".parse()?))
/// );
/// assert_eq!(s.identify(&SimpleRequest::new("/health"))?, None);
/// assert!(s.identify(&SimpleRequest::new("/t/../admin")).is_err());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct PathPrefixStrategy {
    prefix: Arc<str>,
}

impl PathPrefixStrategy {
    /// Matches `/{prefix}/{slug}` (the prefix without slashes, e.g. `"t"`).
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.trim_matches('/').into(),
        }
    }

    /// The path after the tenant segment (`/t/acme/policies` → `/policies`),
    /// for adapters that route without the prefix. `None` when the path is
    /// not under the prefix.
    ///
    /// ```
    /// # use tenancy_core::resolve::PathPrefixStrategy;
    /// let s = PathPrefixStrategy::new("t");
    /// assert_eq!(s.strip("/t/acme/policies?x=1"), Some("/policies?x=1"));
    /// assert_eq!(s.strip("/t/acme"), Some("/"));
    /// assert_eq!(s.strip("/other"), None);
    /// ```
    pub fn strip<'p>(&self, path: &'p str) -> Option<&'p str> {
        let rest = self.segment_and_rest(path)?.1;
        Some(if rest.is_empty() { "/" } else { rest })
    }

    fn segment_and_rest<'p>(&self, path: &'p str) -> Option<(&'p str, &'p str)> {
        let after = path.strip_prefix('/')?.strip_prefix(&*self.prefix)?;
        let after = after.strip_prefix('/')?;
        let end = after.find(['/', '?', '#']).unwrap_or(after.len());
        Some((&after[..end], &after[end..]))
    }
}

impl Strategy for PathPrefixStrategy {
    fn name(&self) -> &'static str {
        "path"
    }

    fn identify(&self, req: &dyn RequestView) -> Result<Option<TenantRef>, TenantError> {
        match self.segment_and_rest(req.path()) {
            None => Ok(None),
            Some((segment, _)) => Ok(Some(TenantRef::Slug(TenantSlug::new(segment)?))),
        }
    }
}

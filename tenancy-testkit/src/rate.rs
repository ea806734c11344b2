//! A scenario every rate limiter that counts per subject passes (memory,
//! Redis, PostgreSQL).

use tenancy_core::TenantContext;
use tenancy_core::pipeline::RateCheck;
use tenancy_core::quota::QuotaError;

/// With `resource` limited to `limit` per window in `ctx`'s plan: one
/// subject's calls are counted apart from another's and from the tenant's
/// own count.
// A failed expectation is a failed test.
#[allow(clippy::panic)]
pub async fn subjects_are_counted_apart(
    limiter: &dyn RateCheck,
    ctx: &TenantContext,
    resource: &str,
    limit: u64,
) {
    for i in 0..limit {
        if let Err(e) = limiter.check_rate_for(ctx, resource, "user:ann", 1).await {
            panic!("call {i} of ann refused: {e}");
        }
    }
    match limiter.check_rate_for(ctx, resource, "user:ann", 1).await {
        Err(QuotaError::Exceeded(q)) => assert_eq!(q.limit, limit),
        other => panic!("ann's call over the limit: {other:?}"),
    }
    let bob = limiter.check_rate_for(ctx, resource, "user:bob", 1).await;
    assert!(bob.is_ok(), "bob is counted apart: {bob:?}");
    match limiter.check_rate(ctx, resource, 1).await {
        Ok(d) => assert_eq!(d.remaining(), limit - 1, "the tenant's count is its own"),
        Err(e) => panic!("the tenant's first call: {e}"),
    }
}

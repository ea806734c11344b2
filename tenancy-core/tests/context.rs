//! TenantContext propagation: explicit, task-local, spawned tasks, spans.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

use std::fmt::Debug;
use std::sync::{Arc, Mutex};

use tenancy_core::{
    Tenant, TenantContext, TenantError, TenantFutureExt, TenantId, TenantScoped, current, scope,
    scope_sync, spawn, spawn_current, try_current,
};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;

fn ctx(slug: &str) -> TenantContext {
    TenantContext::new(Tenant::new(TenantId::new_v4(), slug.parse().unwrap(), slug))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scope_survives_awaits_and_thread_hops() {
    let a = ctx("a");
    let id = scope(a.clone(), async {
        let mut seen = Vec::new();
        for _ in 0..50 {
            tokio::task::yield_now().await;
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            seen.push(current().unwrap().tenant_id());
        }
        seen
    })
    .await;
    assert!(id.iter().all(|t| *t == a.tenant_id()));
    assert!(
        try_current().is_none(),
        "the scope must end with its future"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_scopes_do_not_bleed() {
    let mut tasks = Vec::new();
    for i in 0..32 {
        let c = ctx(&format!("t{i}"));
        tasks.push(tokio::spawn(scope(c.clone(), async move {
            for _ in 0..20 {
                tokio::task::yield_now().await;
                assert_eq!(current().unwrap().tenant_id(), c.tenant_id());
            }
        })));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

#[tokio::test]
async fn nested_scope_shadows_then_restores() {
    let (a, b) = (ctx("a"), ctx("b"));
    scope(a.clone(), async {
        let inner = scope(b.clone(), async { current().unwrap().tenant_id() }).await;
        assert_eq!(inner, b.tenant_id());
        assert_eq!(current().unwrap().tenant_id(), a.tenant_id());
    })
    .await;
}

#[tokio::test]
async fn plain_tokio_spawn_has_no_tenant_helpers_carry_it() {
    let a = ctx("a");
    scope(a.clone(), async {
        // tokio::spawn does not carry task-locals: the task fails closed.
        let plain = tokio::spawn(async { current().map(|c| c.tenant_id()) })
            .await
            .unwrap();
        assert!(matches!(plain, Err(TenantError::NoContext)));

        let via_helper = spawn_current(async { current().map(|c| c.tenant_id()) })
            .unwrap()
            .await
            .unwrap()
            .unwrap();
        assert_eq!(via_helper, a.tenant_id());

        let via_ctx = a
            .spawn(async { current().map(|c| c.tenant_id()) })
            .await
            .unwrap()
            .unwrap();
        assert_eq!(via_ctx, a.tenant_id());

        let via_ext = tokio::spawn(
            async { current().map(|c| c.tenant_id()) }
                .in_current_tenant()
                .unwrap(),
        )
        .await
        .unwrap()
        .unwrap();
        assert_eq!(via_ext, a.tenant_id());
    })
    .await;
    let b = ctx("b");
    let explicit = spawn(b.clone(), async { current().unwrap().tenant_id() })
        .await
        .unwrap();
    assert_eq!(explicit, b.tenant_id());
    assert!(matches!(
        spawn_current(async {}),
        Err(TenantError::NoContext)
    ));
}

#[test]
fn sync_scope_works_without_a_runtime() {
    let a = ctx("a");
    assert_eq!(
        scope_sync(a.clone(), || current().unwrap().tenant_id()),
        a.tenant_id()
    );
    assert!(current().is_err());
}

#[test]
fn with_methods_leave_original_untouched() {
    let a = ctx("a");
    let meta = tenancy_core::RequestMeta::default().with_user_agent("ua");
    let b = a.with_request(meta);
    assert_eq!(b.request().user_agent.as_deref(), Some("ua"));
    assert_eq!(a.request().user_agent, None);
    assert_eq!(a.tenant_id(), b.tenant_id());
}

#[test]
fn write_guard_detects_foreign_entities() {
    struct Row(TenantId);
    impl TenantScoped for Row {
        fn tenant_id(&self) -> TenantId {
            self.0
        }
    }
    let a = ctx("a");
    assert!(a.check(&Row(a.tenant_id())).is_ok());
    let other = TenantId::new_v4();
    match a.check(&Row(other)) {
        Err(TenantError::Mismatch(m)) => {
            assert_eq!((m.expected, m.found), (a.tenant_id(), other));
        }
        r => panic!("expected mismatch, got {r:?}"),
    }
    assert_eq!(a.check(&Row(other)).unwrap_err().status(), 403);
}

type SpanRecord = (String, Vec<(String, String)>);

#[derive(Clone, Default)]
struct Capture {
    spans: Arc<Mutex<Vec<SpanRecord>>>,
    event_spans: Arc<Mutex<Vec<Option<String>>>>,
}

struct Fields<'a>(&'a mut Vec<(String, String)>);
impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn Debug) {
        self.0.push((field.name().to_owned(), format!("{value:?}")));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.push((field.name().to_owned(), value.to_owned()));
    }
}

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Capture {
    fn on_new_span(&self, attrs: &Attributes<'_>, _: &Id, _: Context<'_, S>) {
        let mut fields = Vec::new();
        attrs.record(&mut Fields(&mut fields));
        self.spans
            .lock()
            .unwrap()
            .push((attrs.metadata().name().to_owned(), fields));
    }
    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let span = ctx.event_span(event).map(|s| s.name().to_owned());
        self.event_spans.lock().unwrap().push(span);
    }
}

/// Tests here capture tracing output with a thread-local subscriber while
/// other tests run in parallel threads without one. A callsite first hit on
/// such a thread can have its interest cached as "never", and the capturing
/// test then loses events (seen on CI). A global no-op registry keeps every
/// callsite enabled; dispatch still goes to the thread-local subscriber
/// where one is set.
fn keep_callsites_enabled() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = tracing::subscriber::set_global_default(tracing_subscriber::registry());
    });
}

#[tokio::test]
async fn scope_opens_a_span_carrying_tenant_id() {
    keep_callsites_enabled();
    let capture = Capture::default();
    let subscriber = tracing_subscriber::registry().with(capture.clone());
    let _guard = tracing::subscriber::set_default(subscriber);
    let a = ctx("acme");
    scope(a.clone(), async {
        tracing::info!("inside");
    })
    .await;
    let spans = capture.spans.lock().unwrap().clone();
    let (name, fields) = spans.iter().find(|(n, _)| n == "tenant").unwrap();
    assert_eq!(name, "tenant");
    assert!(
        fields
            .iter()
            .any(|(k, v)| k == "tenant.id" && *v == a.tenant_id().to_string()),
        "{fields:?}"
    );
    assert!(
        fields
            .iter()
            .any(|(k, v)| k == "tenant.slug" && v == "acme")
    );
    assert_eq!(
        capture.event_spans.lock().unwrap().as_slice(),
        &[Some("tenant".to_owned())]
    );
}

//! A server for `scripts/bench-web`: `web-bench-server <axum|actix> <bare|header|tenant> <port>`,
//! one worker thread, `GET /` answering `ok` (`header`: axum only, the bare
//! handler plus the `x-tenant-id` response header the pipeline adds).
#![allow(clippy::print_stderr)]

use actix_web::{App, HttpServer, web};

fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let usage = || {
        std::io::Error::other("usage: web-bench-server <axum|actix> <bare|header|tenant> <port>")
    };
    let (framework, mode, port) = match args.as_slice() {
        [_, f, m, p] => (
            f.as_str(),
            m.as_str(),
            p.parse::<u16>().map_err(|_| usage())?,
        ),
        _ => return Err(usage()),
    };
    if framework == "actix" && mode == "header" {
        return Err(usage());
    }
    let tenant = match mode {
        "bare" | "header" => false,
        "tenant" => true,
        _ => return Err(usage()),
    };
    match framework {
        "axum" => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(async {
                let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
                let app = if mode == "header" {
                    tenancy_benches::axum_bare_with_header()
                } else {
                    tenancy_benches::axum_app(tenant)
                };
                axum::serve(listener, app).await
            }),
        "actix" => actix_web::rt::System::new().block_on(async move {
            HttpServer::new(move || {
                let app = App::new();
                if tenant {
                    app.service(
                        web::scope("")
                            .wrap(tenancy_actix::TenantMiddleware::new(
                                tenancy_benches::pipeline(),
                            ))
                            .route("/", web::get().to(tenancy_benches::actix_tenant_handler)),
                    )
                } else {
                    app.configure(tenancy_benches::actix_bare)
                }
            })
            .workers(1)
            .bind(("127.0.0.1", port))?
            .run()
            .await
        }),
        _ => Err(usage()),
    }
}

//! A server for `scripts/bench-web`: `web-bench-server <axum|actix> <bare|tenant> <port>`,
//! one worker thread, `GET /` answering `ok`.
#![allow(clippy::print_stderr)]

use actix_web::{App, HttpServer, web};

fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let usage =
        || std::io::Error::other("usage: web-bench-server <axum|actix> <bare|tenant> <port>");
    let (framework, mode, port) = match args.as_slice() {
        [_, f, m, p] => (
            f.as_str(),
            m.as_str(),
            p.parse::<u16>().map_err(|_| usage())?,
        ),
        _ => return Err(usage()),
    };
    let tenant = match mode {
        "bare" => false,
        "tenant" => true,
        _ => return Err(usage()),
    };
    match framework {
        "axum" => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(async {
                let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
                axum::serve(listener, tenancy_benches::axum_app(tenant)).await
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

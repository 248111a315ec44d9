//! The HTTP side endpoint of coordinator and workers: Prometheus text on `/metrics`, liveness on
//! `/healthz`, readiness on `/readyz` (503 until ready).

use axum::http::StatusCode;
use axum::routing::get;
use std::sync::Arc;

/// Renders the metrics page (Prometheus text exposition format 0.0.4).
pub type Render = Arc<dyn Fn() -> String + Send + Sync>;
/// Whether the process is ready to serve.
pub type Ready = Arc<dyn Fn() -> bool + Send + Sync>;

/// Serves the endpoint on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    render: Render,
    ready: Ready,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let render = render.clone();
                async move {
                    (
                        [(
                            axum::http::header::CONTENT_TYPE,
                            "text/plain; version=0.0.4",
                        )],
                        render(),
                    )
                }
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(move || {
                let ready = ready.clone();
                async move {
                    if ready() {
                        (StatusCode::OK, "ready\n")
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
                    }
                }
            }),
        );
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

/// Appends one metric (HELP, TYPE and value) to a Prometheus text page.
pub fn metric(page: &mut String, name: &str, kind: &str, help: &str, value: f64) {
    use std::fmt::Write;
    let _ = writeln!(
        page,
        "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
    );
}

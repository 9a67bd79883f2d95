//! `GET /metrics`: Prometheus text exposition.

use std::fmt::Write as _;
use std::sync::atomic::Ordering;

use super::AppState;
use crate::api::ModelState;
use crate::api::WorkerInfo;
use crate::api::WorkerState;
use crate::pages;

pub fn render_metrics(state: &AppState) -> String {
    let mut out = String::new();
    let mut gauge = |name: &str, help: &str, samples: &[(String, f64)]| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
        for (labels, value) in samples {
            let _ = writeln!(out, "{name}{labels} {value}");
        }
    };
    let models = state.registry.list();
    let per_model = |f: &dyn Fn(&crate::api::ModelInfo) -> f64| -> Vec<(String, f64)> {
        models
            .iter()
            .map(|m| (format!("{{model=\"{}\"}}", m.name), f(m)))
            .collect()
    };
    gauge(
        "modelhost_up",
        "1 while the host is serving.",
        &[(String::new(), 1.0)],
    );
    gauge(
        "modelhost_uptime_seconds",
        "Seconds since the host started.",
        &[(String::new(), state.started.elapsed().as_secs_f64())],
    );
    let count = |s: ModelState| models.iter().filter(|m| m.state == s).count() as f64;
    gauge(
        "modelhost_models",
        "Loaded models by state.",
        &[
            ("{state=\"loading\"}".into(), count(ModelState::Loading)),
            ("{state=\"ready\"}".into(), count(ModelState::Ready)),
            ("{state=\"failed\"}".into(), count(ModelState::Failed)),
        ],
    );
    gauge(
        "modelhost_model_ready",
        "1 when the model is ready to serve.",
        &per_model(&|m| f64::from(u8::from(m.state == ModelState::Ready))),
    );
    gauge(
        "modelhost_model_mapped_bytes",
        "Bytes of the model's files mapped by the host.",
        &per_model(&|m| m.residency.mapped_bytes as f64),
    );
    gauge(
        "modelhost_model_resident_bytes",
        "Bytes of the model's mapping resident in RAM (mincore).",
        &per_model(&|m| m.residency.resident_bytes as f64),
    );
    gauge(
        "modelhost_model_locked_bytes",
        "Bytes of the model's mapping locked with mlock.",
        &per_model(&|m| m.residency.locked_bytes as f64),
    );
    gauge(
        "modelhost_model_workers",
        "Workers of the model that are ready.",
        &per_model(&|m| {
            m.workers
                .iter()
                .filter(|w| w.state == WorkerState::Ready)
                .count() as f64
        }),
    );
    // Per worker, labelled by model, worker and device: what an operator alerts on when one
    // device's worker keeps failing while the model's other workers serve.
    let workers: Vec<(String, &WorkerInfo)> = models
        .iter()
        .flat_map(|m| {
            m.workers.iter().map(move |w| {
                (
                    format!(
                        "{{model=\"{}\",worker=\"{}\",device=\"{}\"}}",
                        m.name, w.id, w.device
                    ),
                    w,
                )
            })
        })
        .collect();
    let per_worker = |f: &dyn Fn(&WorkerInfo) -> f64| -> Vec<(String, f64)> {
        workers.iter().map(|(l, w)| (l.clone(), f(w))).collect()
    };
    gauge(
        "modelhost_worker_ready",
        "1 while the worker is ready.",
        &per_worker(&|w| f64::from(u8::from(w.state == WorkerState::Ready))),
    );
    gauge(
        "modelhost_worker_failed",
        "1 when the worker has failed for good (the supervisor gave up restarting it).",
        &per_worker(&|w| f64::from(u8::from(w.state == WorkerState::Failed))),
    );
    gauge(
        "modelhost_worker_layers_ready",
        "Blocks the worker has placed on its device.",
        &per_worker(&|w| f64::from(w.layers_ready)),
    );
    gauge(
        "modelhost_worker_weights_bytes",
        "Bytes of weights the worker holds on its device (on the CPU: uses in place).",
        &per_worker(&|w| w.weights_bytes as f64),
    );
    gauge(
        "modelhost_worker_kv_bytes",
        "Bytes of the worker's KV cache.",
        &per_worker(&|w| w.kv_bytes as f64),
    );
    gauge(
        "modelhost_worker_pss_bytes",
        "Proportional set size of the worker process.",
        &per_worker(&|w| w.memory.map_or(0.0, |m| m.pss_bytes as f64)),
    );
    let memory = pages::process_memory(None).unwrap_or_default();
    gauge(
        "modelhost_host_rss_bytes",
        "Resident set size of the host.",
        &[(String::new(), memory.rss_bytes as f64)],
    );
    gauge(
        "modelhost_host_pss_bytes",
        "Proportional set size of the host.",
        &[(String::new(), memory.pss_bytes as f64)],
    );
    let _ = writeln!(
        out,
        "# HELP modelhost_worker_restarts_total Times the supervisor restarted the worker.\n# TYPE modelhost_worker_restarts_total counter"
    );
    for (labels, w) in &workers {
        let _ = writeln!(
            out,
            "modelhost_worker_restarts_total{labels} {}",
            w.restarts
        );
    }
    let c = &state.counters;
    let _ = writeln!(
        out,
        "# HELP modelhost_http_requests_total Control API requests answered.\n# TYPE modelhost_http_requests_total counter\nmodelhost_http_requests_total {}",
        c.requests.load(Ordering::Relaxed)
    );
    let _ = writeln!(
        out,
        "# HELP modelhost_http_errors_total Control API requests answered with an error.\n# TYPE modelhost_http_errors_total counter\nmodelhost_http_errors_total {}",
        c.errors.load(Ordering::Relaxed)
    );
    let _ = writeln!(
        out,
        "# HELP modelhost_connections_refused_total Control connections refused for their peer credentials.\n# TYPE modelhost_connections_refused_total counter\nmodelhost_connections_refused_total {}",
        c.refused.load(Ordering::Relaxed)
    );
    out
}

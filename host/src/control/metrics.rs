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
    render_serving(state, &models, &mut out);
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

/// Picks one of a model's histograms.
type HistogramOf = fn(&crate::gateway::Counters) -> &crate::gateway::Histogram;

/// The generation API's figures, named as vLLM names them (so that its dashboards fit), per
/// model: `model_name` is the label vLLM uses.
fn render_serving(state: &AppState, models: &[crate::api::ModelInfo], out: &mut String) {
    use crate::gateway::BUCKETS;
    let counters = state.gateway.all_counters();
    let mut series = |name: &str, kind: &str, help: &str, samples: Vec<(String, f64)>| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, value) in samples {
            let _ = writeln!(out, "{name}{labels} {value}");
        }
    };
    let label = |m: &str| format!("{{model_name=\"{m}\"}}");
    let queue: Vec<(String, crate::gateway::router::QueueStats)> = models
        .iter()
        .map(|m| (m.name.clone(), state.gateway.router.stats(&m.name)))
        .collect();
    series(
        "vllm:num_requests_running",
        "gauge",
        "Requests holding a sequence slot on a worker.",
        queue
            .iter()
            .map(|(m, q)| (label(m), f64::from(q.running)))
            .collect(),
    );
    series(
        "vllm:num_requests_waiting",
        "gauge",
        "Requests waiting in the model's queue for a slot.",
        queue
            .iter()
            .map(|(m, q)| (label(m), q.waiting as f64))
            .collect(),
    );
    series(
        "modelhost_admission_rejected_total",
        "counter",
        "Requests refused at admission (a full queue, or no worker), answered 429 or 503.",
        queue
            .iter()
            .map(|(m, q)| (label(m), q.rejected as f64))
            .collect(),
    );
    series(
        "modelhost_worker_requests_running",
        "gauge",
        "Requests holding a sequence slot on this worker.",
        models
            .iter()
            .flat_map(|m| {
                m.workers.iter().map(move |w| {
                    (
                        format!("{{model_name=\"{}\",worker=\"{}\"}}", m.name, w.id),
                        f64::from(state.gateway.router.leased_on(&m.name, &w.id)),
                    )
                })
            })
            .collect(),
    );
    // KV usage: the slots in use over the slots the model's computing workers have.
    series(
        "vllm:kv_cache_usage_perc",
        "gauge",
        "Fraction of the model's sequence slots in use (each slot owns its KV cache).",
        models
            .iter()
            .map(|m| {
                let slots: u32 = m
                    .workers
                    .iter()
                    .filter(|w| w.state == WorkerState::Ready)
                    .filter_map(|w| match &w.inference {
                        Some(modelhost_protocol::wire::Inference::Ready { slots, .. }) => {
                            Some(*slots)
                        }
                        _ => None,
                    })
                    .sum();
                let running = state.gateway.router.stats(&m.name).running;
                let usage = if slots == 0 {
                    0.0
                } else {
                    f64::from(running) / f64::from(slots)
                };
                (label(&m.name), usage)
            })
            .collect(),
    );
    let total = |f: &dyn Fn(&crate::gateway::Counters) -> u64| -> Vec<(String, f64)> {
        counters
            .iter()
            .map(|(m, c)| (label(m), f(c) as f64))
            .collect()
    };
    let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    series(
        "vllm:prompt_tokens_total",
        "counter",
        "Prompt tokens of finished requests.",
        total(&|c| load(&c.prompt_tokens)),
    );
    series(
        "vllm:generation_tokens_total",
        "counter",
        "Tokens generated.",
        total(&|c| load(&c.generation_tokens)),
    );
    series(
        "vllm:prefix_cache_queries_total",
        "counter",
        "Prompt tokens looked up in the slots' kept prefixes.",
        total(&|c| load(&c.prompt_tokens)),
    );
    series(
        "vllm:prefix_cache_hits_total",
        "counter",
        "Prompt tokens found in a slot's kept prefix (not computed).",
        total(&|c| load(&c.cached_tokens)),
    );
    series(
        "modelhost_requests_replaced_total",
        "counter",
        "Requests placed again after their worker went away before the first token.",
        total(&|c| load(&c.replaced)),
    );
    let _ = writeln!(out, "# HELP vllm:request_success_total Requests finished, by reason.\n# TYPE vllm:request_success_total counter");
    for (m, c) in &counters {
        for (reason, n) in [
            ("stop", load(&c.finished_stop)),
            ("length", load(&c.finished_length)),
            ("abort", load(&c.cancelled)),
            ("error", load(&c.failed)),
        ] {
            let _ = writeln!(
                out,
                "vllm:request_success_total{{model_name=\"{m}\",finished_reason=\"{reason}\"}} {n}"
            );
        }
    }
    let histograms: [(&str, &str, HistogramOf); 4] = [
        (
            "vllm:time_to_first_token_seconds",
            "From arrival to the first token.",
            |c| &c.ttft,
        ),
        (
            "vllm:inter_token_latency_seconds",
            "Between consecutive tokens of a request.",
            |c| &c.inter_token,
        ),
        (
            "vllm:e2e_request_latency_seconds",
            "From arrival to the end of a finished request.",
            |c| &c.e2e,
        ),
        (
            "vllm:request_queue_time_seconds",
            "From arrival to a slot.",
            |c| &c.queue_time,
        ),
    ];
    for (name, help, pick) in histograms {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (m, c) in &counters {
            let (buckets, sum, count) = pick(c).snapshot();
            for (bound, n) in BUCKETS.iter().zip(&buckets) {
                let _ = writeln!(
                    out,
                    "{name}_bucket{{model_name=\"{m}\",le=\"{bound}\"}} {n}"
                );
            }
            let _ = writeln!(
                out,
                "{name}_bucket{{model_name=\"{m}\",le=\"+Inf\"}} {count}"
            );
            let _ = writeln!(out, "{name}_sum{{model_name=\"{m}\"}} {sum}");
            let _ = writeln!(out, "{name}_count{{model_name=\"{m}\"}} {count}");
        }
    }
}

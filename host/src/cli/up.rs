//! `modelhost up`: one command from nothing to N ready workers sharing one model. It uses the
//! running host (or starts one), loads the model with its workers, shows a progress bar per
//! worker, and ends on a table of readiness, time and memory against the file size.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use clap::Args;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use modelhost_protocol::placement::Mode;

use super::{block_on, CliError, ConnectArgs};
use crate::api::Event;
use crate::api::PlacementRequest;
use crate::api::WorkerState;
use crate::api::{LoadRequest, MlockMode, ModelInfo, ModelState, Status};
use crate::client::{Client, ClientError, EventStream};
use crate::config::default_socket_path;
use crate::registry::planned_workers;
use crate::units::format_bytes;

#[derive(Debug, Args)]
pub struct UpArgs {
    /// The GGUF file (for a split model, any shard).
    model: PathBuf,
    /// How many workers (default: one per device listed, else 1).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1024))]
    workers: Option<u32>,
    /// The device for every worker (cpu, cpu:N, cuda:N), or a comma-separated list, one per worker.
    #[arg(long, default_value = "cpu", value_delimiter = ',')]
    device: Vec<String>,
    /// The name to serve it under (default: the file name without .gguf).
    #[arg(long)]
    name: Option<String>,
    /// Context length per sequence (default: 4096, or the model's if shorter).
    #[arg(long, default_value_t = 4096)]
    ctx: u32,
    /// Sequences each worker serves at once, each with the whole context (KV grows with it).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=256))]
    parallel: u32,
    /// Print the final state as JSON.
    #[arg(long)]
    json: bool,
    /// When a worker fails, leave the model loaded to inspect it (by default `up` unloads what it
    /// loaded, so that a failed `up` leaves the host as it found it).
    #[arg(long)]
    keep_on_failure: bool,
    /// Start the workers only once the model's pages are all read, rather than while they are
    /// read (by default requests are served during the load).
    #[arg(long)]
    workers_after_load: bool,
    #[command(flatten)]
    connect: ConnectArgs,
}

/// Starts `modelhost serve` in the background unless a host already answers.
pub(crate) fn ensure_host(client: &Client, socket: &PathBuf) -> Result<Option<u32>, CliError> {
    if block_on(client.get::<Status>("/v1/status"))?.is_ok() {
        return Ok(None);
    }
    let log = socket.with_extension("log");
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let log_file = std::fs::File::create(&log)?;
    let child = Command::new(std::env::current_exe()?)
        .arg("serve")
        .arg("--socket")
        .arg(socket)
        .stdin(Stdio::null())
        .stdout(log_file.try_clone()?)
        .stderr(log_file)
        .spawn()?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if block_on(client.get::<Status>("/v1/status"))?.is_ok() {
            eprintln!(
                "started a host (pid {}) on {}; its log is {}",
                child.id(),
                socket.display(),
                log.display()
            );
            return Ok(Some(child.id()));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(CliError(format!(
        "the host did not start; see {}",
        log.display()
    )))
}

/// Loads `path` with one CPU worker and waits until it is ready, printing only the progress
/// (for `run` and `chat` on a file); returns the model's name.
pub(crate) fn load_quietly(
    socket: &std::path::Path,
    path: &std::path::Path,
) -> Result<String, CliError> {
    let client = Client::new(socket);
    let request = LoadRequest {
        path: path.to_owned(),
        name: None,
        prefault: true,
        mlock: MlockMode::Off,
        copy: false,
        devices: vec!["cpu".into()],
        placement: PlacementRequest {
            ctx: Some(4096),
            mode: Some(Mode::Replicate),
            ..Default::default()
        },
        spawn_workers: true,
        serve_while_loading: true,
        worker_options: Default::default(),
    };
    block_on(async {
        let mut events = client.events().await?;
        let registered: ModelInfo = client
            .post("/v1/models", &request)
            .await
            .map_err(explain_refusal)?;
        let name = registered.name.clone();
        match wait_until_ready(&client, &mut events, &registered, true).await {
            Ok(info) => Ok(info.name),
            Err(error) => Err(roll_back(&client, &name, error).await),
        }
    })?
}

pub fn run(args: UpArgs) -> Result<(), CliError> {
    let socket = args
        .connect
        .socket_path()
        .unwrap_or_else(default_socket_path);
    let client = Client::new(&socket);
    let devices: Vec<String> = match (args.device.as_slice(), args.workers) {
        ([one], workers) => vec![one.clone(); workers.unwrap_or(1) as usize],
        (listed, Some(n)) if n as usize != listed.len() => {
            return Err(CliError(format!(
                "--workers {n} but --device lists {} devices; list one device per worker, or \
                 one device for them all",
                listed.len()
            )))
        }
        (listed, _) => listed.to_vec(),
    };
    ensure_host(&client, &socket)?;
    let request = LoadRequest {
        path: std::path::absolute(&args.model)?,
        name: args.name.clone(),
        prefault: true,
        mlock: MlockMode::Off,
        copy: false,
        devices,
        placement: PlacementRequest {
            ctx: Some(args.ctx),
            parallel: Some(args.parallel),
            mode: Some(Mode::Replicate),
            ..Default::default()
        },
        spawn_workers: true,
        serve_while_loading: !args.workers_after_load,
        worker_options: Default::default(),
    };
    let started = Instant::now();
    let keep_on_failure = args.keep_on_failure;
    let info = block_on(async {
        // Subscribe before posting, so that no event of this load can be missed.
        let mut events = client.events().await?;
        let registered: ModelInfo = client
            .post("/v1/models", &request)
            .await
            .map_err(explain_refusal)?;
        let name = registered.name.clone();
        match wait_until_ready(&client, &mut events, &registered, args.json).await {
            Ok(info) => Ok(info),
            Err(error) if keep_on_failure => Err(CliError(format!(
                "{}; {name} stays loaded (--keep-on-failure): `modelhost ps` shows its workers",
                error.0
            ))),
            Err(error) => Err(roll_back(&client, &name, error).await),
        }
    })??;
    let status: Status = block_on(client.get("/v1/status"))??;

    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({ "model": info, "host": status }))?
        );
        return Ok(());
    }
    println!(
        "\n{} ready: {} workers in {} ms, sharing {} ({})\n",
        info.name,
        info.workers.len(),
        started.elapsed().as_millis(),
        info.path.display(),
        format_bytes(info.file_bytes)
    );
    println!(
        "{:<26} {:<7} {:>8} {:<6} {:>7} {:>9} {:>10} {:>10} {:>10}",
        "WORKER", "DEVICE", "PID", "STATE", "BLOCKS", "READY_MS", "KV", "RSS", "PSS"
    );
    let mut total_pss = status.host_memory.pss_bytes;
    let mut kv_total = 0;
    for w in &info.workers {
        let memory = w.memory.unwrap_or_default();
        total_pss += memory.pss_bytes;
        kv_total += w.kv_bytes;
        println!(
            "{:<26} {:<7} {:>8} {:<6} {:>7} {:>9} {:>10} {:>10} {:>10}",
            w.id,
            w.device.to_string(),
            w.pid.map_or("-".into(), |p| p.to_string()),
            format!("{:?}", w.state).to_lowercase(),
            format!("{}/{}", w.layers_ready, w.layers),
            w.ready_ms.map_or("-".into(), |m| m.to_string()),
            format_bytes(w.kv_bytes),
            format_bytes(memory.rss_bytes),
            format_bytes(memory.pss_bytes)
        );
    }
    println!(
        "{:<26} {:<7} {:>8} {:<6} {:>7} {:>9} {:>10} {:>10} {:>10}",
        "host",
        "",
        status.pid,
        "",
        "",
        "",
        "",
        format_bytes(status.host_memory.rss_bytes),
        format_bytes(status.host_memory.pss_bytes)
    );
    let file = info.file_bytes.max(1) as f64;
    println!(
        "\ntotal PSS {} = {:.2} × the file; without the {} of KV caches, {:.2} × the file",
        format_bytes(total_pss),
        total_pss as f64 / file,
        format_bytes(kv_total),
        total_pss.saturating_sub(kv_total) as f64 / file
    );
    Ok(())
}

/// A refused load, with what to do about the refusals `up` makes likely.
fn explain_refusal(error: ClientError) -> CliError {
    match &error {
        ClientError::Api { code, .. } if code == "model_exists" => CliError(format!(
            "{error}; `modelhost unload NAME --force` stops it and its workers, or --name serves \
             this one under another name"
        )),
        _ => error.into(),
    }
}

/// Undoes this `up`'s load after a failure, and says so in the error.
async fn roll_back(client: &Client, name: &str, error: CliError) -> CliError {
    let path = format!("/v1/models/{name}?force=true");
    match client.delete::<serde_json::Value>(&path).await {
        Ok(_) => CliError(format!(
            "{}; unloaded {name} again, so the host is as `up` found it (--keep-on-failure \
             keeps it loaded for inspection)",
            error.0
        )),
        Err(e) => CliError(format!("{}; unloading {name} failed as well: {e}", error.0)),
    }
}

/// Follows the event stream until every planned worker of the model is Ready and the model's
/// pages are all read (workers may compute before that), with a progress bar per worker. A worker that fails for good, a failed load, an unload by someone else or a
/// closed stream end the wait with an error. When the stream lagged, the model's own status
/// fills in the events that were dropped.
async fn wait_until_ready(
    client: &Client,
    events: &mut EventStream,
    registered: &ModelInfo,
    quiet: bool,
) -> Result<ModelInfo, CliError> {
    let name = registered.name.as_str();
    let model_path = format!("/v1/models/{name}");
    let expected = registered.plan.as_ref().map_or(0, planned_workers);
    let bars = MultiProgress::new();
    if quiet {
        bars.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let style =
        ProgressStyle::with_template("{prefix:>12} {msg:<10} [{bar:30}] {bytes}/{total_bytes}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
    let mut per_worker: BTreeMap<String, ProgressBar> = BTreeMap::new();
    let mut states: BTreeMap<String, WorkerState> = BTreeMap::new();
    let mut model_ready = registered.state == ModelState::Ready;
    let failed = |worker: &str, error: Option<String>| {
        CliError(format!(
            "worker {worker} failed: {}",
            error.unwrap_or_else(|| "no reason given".into())
        ))
    };
    loop {
        let ready = states
            .values()
            .filter(|s| **s == WorkerState::Ready)
            .count();
        if states.len() >= expected && ready >= expected && model_ready {
            break;
        }
        let Some(envelope) = events.next().await? else {
            return Err(CliError("the host closed the event stream".into()));
        };
        match envelope.event {
            Event::WorkerProgress {
                model,
                worker,
                done_bytes,
                total_bytes,
                ..
            } if model == name => {
                let bar = per_worker.entry(worker.clone()).or_insert_with(|| {
                    let b = bars.add(ProgressBar::new(total_bytes));
                    b.set_style(style.clone());
                    b.set_prefix(worker);
                    b
                });
                bar.set_length(total_bytes);
                bar.set_position(done_bytes);
                bar.set_message("attaching");
            }
            Event::WorkerState {
                model,
                worker,
                state,
                error,
                ..
            } if model == name => {
                if state == WorkerState::Failed {
                    return Err(failed(&worker, error));
                }
                if let Some(bar) = per_worker.get(&worker) {
                    bar.set_message(format!("{state:?}").to_lowercase());
                    if state == WorkerState::Ready {
                        bar.finish();
                    }
                }
                states.insert(worker, state);
            }
            Event::ModelState {
                model,
                error: Some(e),
                ..
            } if model == name => {
                return Err(CliError(format!("{name} failed to load: {e}")));
            }
            Event::ModelState { model, state, .. } if model == name => {
                model_ready = state == ModelState::Ready;
            }
            Event::ModelUnloaded { model } if model == name => {
                return Err(CliError(format!(
                    "{name} was unloaded by another client before its workers were ready"
                )));
            }
            Event::Lagged { .. } => {
                let info: ModelInfo = client.get(&model_path).await?;
                model_ready = info.state == ModelState::Ready;
                if let Some(e) = info.error.filter(|_| info.state == ModelState::Failed) {
                    return Err(CliError(format!("{name} failed to load: {e}")));
                }
                for worker in info.workers {
                    if worker.state == WorkerState::Failed {
                        return Err(failed(&worker.id, worker.error));
                    }
                    states.insert(worker.id, worker.state);
                }
            }
            _ => {}
        }
    }
    Ok(client.get(&model_path).await?)
}

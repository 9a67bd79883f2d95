//! `modelhost-worker`: the reference worker. Spawned by the host with a connected socket
//! (`--fd N`), or started by a process manager (`--connect SOCKET --model NAME --device D`).
//!
//! It says Hello, receives Attach and the model's descriptors, places its layers, reports Ready,
//! and heartbeats. It exits when told to, and within a second of the host's socket closing.

use std::os::fd::FromRawFd;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::Parser;
use modelhost_node::channel::{Channel, ChannelError, Sender};
use modelhost_node::cpu::pin_to_numa_node;
use modelhost_protocol::placement::{DeviceId, DeviceKind};
use modelhost_protocol::wire::{FinishReason, Finished, Hello, Message};
use modelhost_worker::attach::attach;
use modelhost_worker::backend::cpu::CpuBackend;
use modelhost_worker::backend::cuda::CudaBackend;
use modelhost_worker::backend::Backend;
use modelhost_worker::devices;
use modelhost_worker::inference;
use modelhost_worker::serve::Server;

/// Attach to a model the modelhost host has mapped, and serve it on one device.
#[derive(Debug, Parser)]
#[command(name = "modelhost-worker", version)]
struct Args {
    /// A connected socket inherited from the host.
    #[arg(long, conflicts_with = "connect")]
    fd: Option<i32>,
    /// The host's worker socket, for workers a process manager starts.
    #[arg(long, requires = "model")]
    connect: Option<PathBuf>,
    /// The model to serve (with --connect).
    #[arg(long)]
    model: Option<String>,
    /// The device: cpu, cpu:N or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: DeviceId,
    /// A name for the host's logs.
    #[arg(long, default_value = "worker")]
    worker_id: String,
    /// Print these devices' inventories (name, total and free memory) as a JSON array, and
    /// exit: `--inventory cuda:0,cuda:1`. The host asks the CUDA driver this way, so that the
    /// daemon itself never loads the driver.
    #[arg(long, value_delimiter = ',', conflicts_with_all = ["fd", "connect"])]
    inventory: Option<Vec<DeviceId>>,
    /// Print every CUDA device's inventory as a JSON array (empty without a driver), and exit.
    #[arg(long, conflicts_with_all = ["fd", "connect", "inventory"])]
    cuda_devices: bool,
    /// Run the inference engine on a model file with no host and print its speed: prompt
    /// processing, one sequence decoding, and --sequences decoding together.
    #[arg(long, value_name = "MODEL", conflicts_with_all = ["fd", "connect", "inventory"])]
    bench: Option<PathBuf>,
    /// Compute threads for --bench.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Prompt tokens for --bench.
    #[arg(long, default_value_t = 128)]
    prompt: u32,
    /// Tokens to decode for --bench.
    #[arg(long, default_value_t = 64)]
    decode: u32,
    /// Sequences decoded together for --bench.
    #[arg(long, default_value_t = 4)]
    sequences: u32,
    /// Times --bench runs each phase; it reports the medians.
    #[arg(long, default_value_t = 1)]
    rounds: u32,
    /// Print --bench's figures as JSON.
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let outcome = match &args.inventory {
        Some(devices) => print_inventory(devices),
        None if args.cuda_devices => print_json(&devices::cuda_devices()),
        None if args.bench.is_some() => bench(&args),
        None => run(args),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("modelhost-worker: {e}");
            ExitCode::FAILURE
        }
    }
}

fn print_inventory(ids: &[DeviceId]) -> Result<(), String> {
    let specs = ids
        .iter()
        .map(|&id| devices::inventory(id).map_err(|e| e.to_string()))
        .collect::<Result<Vec<_>, _>>()?;
    print_json(&specs)
}

fn bench(args: &Args) -> Result<(), String> {
    let path = args.bench.as_deref().ok_or("--bench needs a model")?;
    let report = modelhost_worker::bench::run(
        path,
        &modelhost_worker::bench::BenchOptions {
            threads: args.threads,
            prompt: args.prompt,
            decode: args.decode,
            sequences: args.sequences,
            rounds: args.rounds,
        },
    )
    .map_err(|e| e.to_string())?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string(&report).map_err(|e| e.to_string())?
        );
    } else {
        let mib = |b: u64| b as f64 / (1 << 20) as f64;
        println!(
            "{}: {} threads, {} kernels; {:.1} MiB of weights per step, scratch {:.1} MiB, KV {:.1} MiB",
            report.model,
            report.threads,
            report.kernels,
            mib(report.weight_bytes_per_step),
            mib(report.scratch_bytes),
            mib(report.kv_bytes)
        );
        println!(
            "  prompt  {:>5} tokens  {:>8.1} tok/s",
            report.prompt_tokens, report.prompt_tok_s
        );
        println!(
            "  decode  {:>5} tokens  {:>8.1} tok/s",
            report.decode_tokens, report.decode_tok_s
        );
        println!(
            "  decode  {:>5} x {} seq {:>8.1} tok/s",
            report.decode_tokens, report.sequences, report.batched_tok_s
        );
        let floor = report.mapping_read_gbs * 1e9 / report.weight_bytes_per_step as f64;
        println!(
            "  read bandwidth {:.1} GB/s (heap), {:.1} GB/s (the mapping): decode floor {:.1} tok/s, decode at {:.2}x it",
            report.heap_read_gbs,
            report.mapping_read_gbs,
            floor,
            report.decode_tok_s / floor
        );
        println!(
            "  private anonymous memory {:.1} MiB (KV {:.1} MiB + scratch {:.1} MiB + {:.1} MiB)",
            mib(report.anonymous_bytes),
            mib(report.kv_bytes),
            mib(report.scratch_bytes),
            mib(report
                .anonymous_bytes
                .saturating_sub(report.kv_bytes + report.scratch_bytes))
        );
    }
    Ok(())
}

fn print_json(specs: &[modelhost_protocol::placement::DeviceSpec]) -> Result<(), String> {
    let json = serde_json::to_string(specs).map_err(|e| e.to_string())?;
    println!("{json}");
    Ok(())
}

fn send(sender: &Mutex<Sender>, message: &Message) {
    let sent = sender.lock().map(|mut s| s.send(message));
    if !matches!(sent, Ok(Ok(()))) {
        // The host is gone: nothing left to work for.
        std::process::exit(0);
    }
}

/// A worker that cannot compute answers every request with why (the host routes none to it;
/// this covers a host that does).
fn refuse_all(
    inbox: &std::sync::mpsc::Receiver<Message>,
    reason: &str,
    send: &mut dyn FnMut(&Message),
) {
    while let Ok(message) = inbox.recv() {
        if let Message::Submit(submit) = message {
            send(&Message::Finished(Finished {
                request: submit.request,
                reason: FinishReason::Error(format!("this worker does not compute: {reason}")),
                prompt_tokens: submit.prompt.len() as u32,
                cached_tokens: 0,
                completion_tokens: 0,
            }));
        }
    }
}

fn run(args: Args) -> Result<(), String> {
    let stream = match (args.fd, &args.connect) {
        // SAFETY: the host passed this descriptor to us as our end of a socketpair; nothing else
        // in this process owns it.
        (Some(fd), _) => unsafe { UnixStream::from_raw_fd(fd) },
        (None, Some(path)) => {
            UnixStream::connect(path).map_err(|e| format!("{}: {e}", path.display()))?
        }
        (None, None) => {
            return Err("give --fd (spawned by the host) or --connect SOCKET --model NAME".into())
        }
    };
    let mut channel = Channel::handshake(stream, Duration::from_secs(10))
        .map_err(|e| format!("handshake: {e}"))?;
    let sender = Arc::new(Mutex::new(channel.sender().map_err(|e| e.to_string())?));
    send(
        &sender,
        &Message::Hello(Hello {
            worker_id: args.worker_id.clone(),
            pid: std::process::id(),
            device: args.device,
            inventory: devices::inventory(args.device).into_iter().collect(),
            model: args.model.clone(),
        }),
    );
    let attach_msg = match channel.recv() {
        Ok(Message::Attach(a)) => a,
        Ok(Message::Shutdown | Message::Detach) | Err(ChannelError::Closed) => return Ok(()),
        Ok(other) => return Err(format!("expected Attach, got {other:?}")),
        Err(e) => return Err(format!("waiting for Attach: {e}")),
    };
    let fds = channel.take_fds();

    // The reader: the host saying stop, or the host going away, ends the process at once.
    // Requests go to the serving loop.
    let (requests, inbox) = std::sync::mpsc::channel::<Message>();
    std::thread::Builder::new()
        .name("host-reader".into())
        .spawn(move || loop {
            match channel.recv() {
                Ok(Message::Shutdown | Message::Detach) | Err(ChannelError::Closed) => {
                    std::process::exit(0)
                }
                Ok(m @ (Message::Submit(_) | Message::Cancel { .. })) => {
                    let _ = requests.send(m);
                }
                Ok(_) => {}
                Err(e) => {
                    eprintln!("modelhost-worker: {e}");
                    std::process::exit(2)
                }
            }
        })
        .map_err(|e| e.to_string())?;
    let heartbeat_sender = Arc::clone(&sender);
    let every = Duration::from_millis(u64::from(attach_msg.heartbeat_ms.max(50)));
    std::thread::Builder::new()
        .name("heartbeat".into())
        .spawn(move || {
            for seq in 0.. {
                std::thread::sleep(every);
                send(&heartbeat_sender, &Message::Heartbeat { seq });
            }
        })
        .map_err(|e| e.to_string())?;

    // A cpu:N worker runs on node N's cores, with its memory there, before it allocates anything.
    let device = attach_msg.assignment.device;
    if let (DeviceKind::Cpu, Some(node)) = (device.kind, device.index) {
        if let Err(e) = pin_to_numa_node(device, node) {
            let error = e.to_string();
            send(
                &sender,
                &Message::Failed {
                    error: error.clone(),
                },
            );
            return Err(error);
        }
    }
    // The backend holds the KV cache and scratch: it lives as long as the worker serves.
    let (attached, backend, engine) = match attach_msg.assignment.device.kind {
        DeviceKind::Cpu => {
            let mut cpu = CpuBackend::new();
            let attached = attach(&attach_msg, fds, &mut cpu, &mut |m| send(&sender, &m));
            let engine = attached.as_ref().ok().map(|attached| {
                let engine = inference::build(&attach_msg, &attached.maps, cpu.take_kv());
                if let Err(reason) = &engine {
                    eprintln!("modelhost-worker: inference unavailable: {reason}");
                }
                engine
            });
            (attached, Box::new(cpu) as Box<dyn Backend>, engine)
        }
        DeviceKind::Cuda => match CudaBackend::new(attach_msg.assignment.device) {
            Ok(mut backend) => {
                let attached = attach(&attach_msg, fds, &mut backend, &mut |m| send(&sender, &m));
                let engine = Some(inference::build(&attach_msg, &[], Vec::new()));
                (attached, Box::new(backend) as Box<dyn Backend>, engine)
            }
            Err(e) => {
                let error = e.to_string();
                send(
                    &sender,
                    &Message::Failed {
                        error: error.clone(),
                    },
                );
                return Err(error);
            }
        },
    };
    match attached {
        Ok(mut attached) => {
            if let Some(engine) = &engine {
                attached.stats.inference = inference::status(engine);
                if let Ok(engine) = engine {
                    attached.stats.scratch_bytes = engine.scratch_bytes();
                }
            }
            send(&sender, &Message::Ready(attached.stats.clone()));
            // Serve until the reader ends the process; the mappings and the backend's buffers
            // stay alive under the engine.
            let mut backend = backend;
            let _keep = attached;
            let mut reply = |m: &Message| send(&sender, m);
            match engine {
                Some(Ok(engine)) => {
                    Server::new(engine).run(&inbox, &mut reply, &mut || backend.idle_step())
                }
                Some(Err(reason)) => refuse_all(&inbox, &reason, &mut reply),
                None => refuse_all(&inbox, "no engine", &mut reply),
            }
            Ok(())
        }
        Err(error) => {
            let error = error.to_string();
            send(
                &sender,
                &Message::Failed {
                    error: error.clone(),
                },
            );
            Err(error)
        }
    }
}

//! The placement planner: table-driven cases with hand-checked expectations, and properties over
//! random models, devices and options.

use core::ops::Range;

use modelhost_protocol::gguf::{HyperParams, PerLayer};
use modelhost_protocol::layers::{LayerGroup, LayerRegion};
use modelhost_protocol::manifest::ModelManifest;
use modelhost_protocol::placement::{
    plan, DeviceId, DeviceSpec, GpuLayers, Mode, PlanError, PlanOptions,
};
use modelhost_protocol::GgmlType;
use proptest::prelude::*;

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

fn region(group: LayerGroup, bytes: u64) -> LayerRegion {
    LayerRegion {
        group,
        tensors: Vec::new(),
        tensor_bytes: bytes,
        extents: Vec::new(),
    }
}

/// A llama-like model: `blocks` of the given weights, 1024 wide, 4 KV heads of 64 (KV cache:
/// 1 KiB per cell per block in f16), a 200 MiB output projection, a 4096-token context.
fn model(block_weights: &[u64]) -> ModelManifest {
    let mut regions = vec![region(LayerGroup::TokenEmbedding, 200 * MIB)];
    regions.extend(
        block_weights
            .iter()
            .enumerate()
            .map(|(i, &w)| region(LayerGroup::Block(i as u32), w)),
    );
    regions.push(region(LayerGroup::OutputNorm, 4096));
    regions.push(region(LayerGroup::Output, 200 * MIB));
    ModelManifest {
        file_bytes: regions.iter().map(|r| r.tensor_bytes).sum(),
        regions,
        vocab_size: 32000,
        tied_output: false,
        inference: Err("not needed for planning".into()),
        hyper_params: HyperParams {
            architecture: "llama".into(),
            block_count: block_weights.len() as u32,
            context_length: 4096,
            embedding_length: 1024,
            feed_forward_length: Some(PerLayer::Uniform(2816)),
            head_count: PerLayer::Uniform(16),
            head_count_kv: PerLayer::Uniform(4),
            key_length: 64,
            value_length: 64,
            sliding_window: None,
        },
    }
}

fn uniform(blocks: u32) -> ModelManifest {
    model(&vec![100 * MIB; blocks as usize])
}

fn gpu(index: u32, free: u64) -> DeviceSpec {
    DeviceSpec {
        id: DeviceId::cuda(index),
        name: format!("test gpu {index}"),
        total_bytes: free,
        free_bytes: free,
        limit_bytes: None,
    }
}

fn cpu() -> DeviceSpec {
    DeviceSpec {
        id: DeviceId::cpu(),
        name: "host".into(),
        total_bytes: 64 * GIB,
        free_bytes: 64 * GIB,
        limit_bytes: None,
    }
}

/// Free memory that leaves room for exactly `blocks` 100 MiB blocks at a 4096 context: the
/// reserve and overhead (768 MiB), the scratch (26 MiB), 104 MiB per block, and 50 MiB spare.
fn room_for(blocks: u64) -> u64 {
    768 * MIB + 26 * MIB + blocks * 104 * MIB + 50 * MIB
}

/// What one replica should look like: (device, its blocks, holds the output), CPU blocks, CPU output.
struct Expect {
    devices: Vec<(&'static str, Range<u32>, bool)>,
    cpu: Range<u32>,
    cpu_output: bool,
}

struct Case {
    name: &'static str,
    model: ModelManifest,
    devices: Vec<DeviceSpec>,
    options: PlanOptions,
    expect: Vec<Expect>,
}

fn cases() -> Vec<Case> {
    let replica_of_five = |d: &'static str| Expect {
        devices: vec![(d, 5..10, false)],
        cpu: 0..5,
        cpu_output: true,
    };
    vec![
        Case {
            name: "one GPU takes everything",
            model: uniform(10),
            devices: vec![gpu(0, 24 * GIB)],
            options: PlanOptions::default(),
            expect: vec![Expect {
                devices: vec![("cuda:0", 0..10, true)],
                cpu: 0..0,
                cpu_output: false,
            }],
        },
        Case {
            name: "one GPU takes only part",
            model: uniform(10),
            devices: vec![gpu(0, room_for(4))],
            options: PlanOptions::default(),
            expect: vec![Expect {
                devices: vec![("cuda:0", 6..10, false)],
                cpu: 0..6,
                cpu_output: true,
            }],
        },
        Case {
            name: "two GPUs split 3:1 by ratio",
            model: uniform(8),
            devices: vec![gpu(0, 24 * GIB), gpu(1, 24 * GIB)],
            options: PlanOptions {
                tensor_split: Some(vec![3.0, 1.0]),
                ..Default::default()
            },
            expect: vec![Expect {
                devices: vec![("cuda:0", 0..6, false), ("cuda:1", 6..8, true)],
                cpu: 0..0,
                cpu_output: false,
            }],
        },
        Case {
            name: "two equal GPUs balance by room",
            model: uniform(10),
            devices: vec![gpu(0, 24 * GIB), gpu(1, 24 * GIB)],
            options: PlanOptions::default(),
            expect: vec![Expect {
                devices: vec![("cuda:0", 0..5, false), ("cuda:1", 5..10, true)],
                cpu: 0..0,
                cpu_output: false,
            }],
        },
        Case {
            name: "replicate over four GPUs with a CPU remainder",
            model: uniform(10),
            devices: (0..4).map(|i| gpu(i, room_for(5))).collect(),
            options: PlanOptions {
                mode: Mode::Replicate,
                ..Default::default()
            },
            expect: vec![
                replica_of_five("cuda:0"),
                replica_of_five("cuda:1"),
                replica_of_five("cuda:2"),
                replica_of_five("cuda:3"),
            ],
        },
        Case {
            name: "a short context fits every block on a 6 GiB GPU",
            model: uniform(10),
            devices: vec![gpu(0, 6 * GIB)],
            options: PlanOptions {
                context_length: Some(4096),
                ..Default::default()
            },
            expect: vec![Expect {
                devices: vec![("cuda:0", 0..10, true)],
                cpu: 0..0,
                cpu_output: false,
            }],
        },
        Case {
            // At 4096 tokens this GPU holds every block and the output (1.2 GiB of its
            // 1.75 GiB of room); at 131072 the KV cache grows to 128 MiB per block, and 7 blocks
            // of 228 MiB fit beside the scratch.
            name: "a longer context pushes blocks off the same GPU",
            model: uniform(10),
            devices: vec![gpu(0, 2560 * MIB)],
            options: PlanOptions {
                context_length: Some(131_072),
                ..Default::default()
            },
            expect: vec![Expect {
                devices: vec![("cuda:0", 3..10, false)],
                cpu: 0..3,
                cpu_output: true,
            }],
        },
        Case {
            name: "the same GPU at a short context holds everything",
            model: uniform(10),
            devices: vec![gpu(0, 2560 * MIB)],
            options: PlanOptions::default(),
            expect: vec![Expect {
                devices: vec![("cuda:0", 0..10, true)],
                cpu: 0..0,
                cpu_output: false,
            }],
        },
        Case {
            name: "a gpu_layers override offloads exactly that many",
            model: uniform(10),
            devices: vec![gpu(0, 24 * GIB)],
            options: PlanOptions {
                gpu_layers: GpuLayers::Count(3),
                ..Default::default()
            },
            expect: vec![Expect {
                devices: vec![("cuda:0", 7..10, false)],
                cpu: 0..7,
                cpu_output: true,
            }],
        },
        Case {
            name: "CPU only",
            model: uniform(10),
            devices: vec![cpu()],
            options: PlanOptions::default(),
            expect: vec![Expect {
                devices: vec![],
                cpu: 0..10,
                cpu_output: true,
            }],
        },
    ]
}

#[test]
fn table_of_placements() {
    for case in cases() {
        let plan = plan(&case.model, &case.devices, &case.options)
            .unwrap_or_else(|e| panic!("{}: {e}", case.name));
        assert_eq!(plan.replicas.len(), case.expect.len(), "{}", case.name);
        for (replica, expect) in plan.replicas.iter().zip(&case.expect) {
            let got: Vec<(String, Vec<u32>, bool)> = replica
                .devices
                .iter()
                .filter(|d| !d.layers.is_empty() || d.output)
                .map(|d| (d.device.to_string(), d.layers.clone(), d.output))
                .collect();
            let want: Vec<(String, Vec<u32>, bool)> = expect
                .devices
                .iter()
                .map(|(d, r, o)| (d.to_string(), r.clone().collect(), *o))
                .collect();
            assert_eq!(got, want, "{}: {:#?}", case.name, plan.reasons);
            assert_eq!(
                replica.cpu_layers,
                expect.cpu.clone().collect::<Vec<_>>(),
                "{}",
                case.name
            );
            assert_eq!(replica.cpu_output, expect.cpu_output, "{}", case.name);
        }
        assert!(
            !plan.reasons.is_empty(),
            "{}: every plan explains itself",
            case.name
        );
    }
}

#[test]
fn replicas_pay_their_own_cpu_kv_but_share_the_weights() {
    let m = uniform(10);
    let devices: Vec<_> = (0..4).map(|i| gpu(i, room_for(5))).collect();
    let p = plan(
        &m,
        &devices,
        &PlanOptions {
            mode: Mode::Replicate,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(p.host.weight_bytes, m.file_bytes, "weights are mapped once");
    assert_eq!(
        p.host.kv_bytes,
        4 * 5 * 4 * MIB,
        "four replicas × five CPU blocks × 4 MiB"
    );
}

#[test]
fn a_model_too_big_for_every_device_says_by_how_much() {
    let m = uniform(10);
    let options = PlanOptions {
        host_available_bytes: 100 * MIB,
        ..Default::default()
    };
    let err = plan(&m, &[cpu()], &options).unwrap_err();
    let PlanError::DoesNotFit {
        needed,
        available,
        short,
        weights,
        kv,
        scratch,
    } = err.clone()
    else {
        panic!("{err}");
    };
    assert_eq!(available, 100 * MIB);
    assert_eq!(weights, m.file_bytes);
    assert_eq!(kv, 10 * 4 * MIB);
    assert_eq!(needed, weights + kv + scratch);
    assert_eq!(short, needed - available);
    assert!(
        err.to_string().contains(&format!("{short} bytes short")),
        "{err}"
    );
}

#[test]
fn refusals_are_named() {
    let m = uniform(10);
    assert_eq!(
        plan(&m, &[], &PlanOptions::default()),
        Err(PlanError::NoDevices)
    );
    let err = plan(
        &m,
        &[gpu(0, room_for(2))],
        &PlanOptions {
            gpu_layers: GpuLayers::Count(5),
            ..Default::default()
        },
    )
    .unwrap_err();
    assert!(
        matches!(err, PlanError::OverrideDoesNotFit { requested: 5, .. }),
        "{err}"
    );
    assert_eq!(
        plan(
            &m,
            &[gpu(0, GIB)],
            &PlanOptions {
                tensor_split: Some(vec![1.0, 1.0]),
                ..Default::default()
            }
        ),
        Err(PlanError::TensorSplitLength { given: 2, gpus: 1 })
    );
    assert_eq!(
        plan(
            &m,
            &[gpu(0, GIB)],
            &PlanOptions {
                kv_type: GgmlType::Q4_K,
                ..Default::default()
            }
        ),
        Err(PlanError::UnsupportedKvType("q4_K".into()))
    );
    let p = plan(&m, &[gpu(0, 100 * MIB)], &PlanOptions::default()).unwrap();
    assert!(
        p.warnings.iter().any(|w| w.contains("no room")),
        "{:?}",
        p.warnings
    );
}

#[test]
fn sliding_window_blocks_keep_only_the_window() {
    let mut m = uniform(12);
    m.hyper_params.architecture = "gemma3".into();
    m.hyper_params.sliding_window = Some(512);
    m.hyper_params.context_length = 32768;
    let p = plan(&m, &[cpu()], &PlanOptions::default()).unwrap();
    // Blocks 5 and 11 are global (32768 cells); the other ten keep 512 + 512 = 1024 cells.
    assert_eq!(p.host.kv_bytes, (2 * 32768 + 10 * 1024) * 1024);
    assert!(
        p.reasons[0].contains("10 of 12 blocks attend to a 512-token window"),
        "{}",
        p.reasons[0]
    );

    m.hyper_params.architecture = "mystery".into();
    let p = plan(&m, &[cpu()], &PlanOptions::default()).unwrap();
    assert_eq!(p.host.kv_bytes, 12 * 32768 * 1024);
    assert!(p.warnings.iter().any(|w| w.contains("pattern is unknown")));
}

fn arb_model() -> impl Strategy<Value = ModelManifest> {
    prop::collection::vec(1u64..200, 1..40)
        .prop_map(|mibs| model(&mibs.iter().map(|m| m * MIB).collect::<Vec<_>>()))
}

fn arb_gpus() -> impl Strategy<Value = Vec<DeviceSpec>> {
    prop::collection::vec((0u64..16 * 1024, prop::option::of(0u64..16 * 1024)), 0..5).prop_map(
        |specs| {
            specs
                .into_iter()
                .enumerate()
                .map(|(i, (free, limit))| DeviceSpec {
                    limit_bytes: limit.map(|l| l * MIB),
                    ..gpu(i as u32, free * MIB)
                })
                .collect()
        },
    )
}

fn arb_options() -> impl Strategy<Value = PlanOptions> {
    (
        256u32..32768,
        1u32..4,
        prop::bool::ANY,
        prop::option::of(0u32..50),
    )
        .prop_map(|(ctx, parallel, replicate, layers)| PlanOptions {
            context_length: Some(ctx),
            parallel,
            mode: if replicate {
                Mode::Replicate
            } else {
                Mode::Split
            },
            gpu_layers: layers.map_or(GpuLayers::Auto, GpuLayers::Count),
            ..Default::default()
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn no_budget_is_exceeded_and_every_block_is_placed_once(m in arb_model(), gpus in arb_gpus(), options in arb_options()) {
        let mut devices = gpus;
        devices.push(cpu());
        let Ok(p) = plan(&m, &devices, &options) else { return Ok(()); };
        for replica in &p.replicas {
            let mut placed: Vec<u32> = replica.cpu_layers.clone();
            for d in &replica.devices {
                prop_assert!(d.total_bytes <= d.budget_bytes, "{d:?}");
                prop_assert_eq!(d.total_bytes, d.weight_bytes + d.kv_bytes + d.scratch_bytes + d.overhead_bytes);
                placed.extend(&d.layers);
            }
            placed.sort_unstable();
            prop_assert_eq!(placed, (0..m.hyper_params.block_count).collect::<Vec<_>>());
            let outputs = replica.devices.iter().filter(|d| d.output).count() + usize::from(replica.cpu_output);
            prop_assert_eq!(outputs, 1, "exactly one output stage");
        }
        prop_assert!(p.host.total_bytes <= p.host.available_bytes);
    }

    #[test]
    fn more_memory_never_means_fewer_gpu_blocks(
        m in arb_model(),
        gpus in arb_gpus().prop_filter("at least one GPU", |g| !g.is_empty()),
        which in any::<prop::sample::Index>(),
        extra_mib in 1u64..8192,
        options in arb_options(),
    ) {
        let options = PlanOptions { gpu_layers: GpuLayers::Auto, ..options };
        let before = plan(&m, &gpus, &options).unwrap();
        let mut bigger = gpus.clone();
        let i = which.index(bigger.len());
        bigger[i].free_bytes += extra_mib * MIB;
        bigger[i].limit_bytes = bigger[i].limit_bytes.map(|l| l + extra_mib * MIB);
        let after = plan(&m, &bigger, &options).unwrap();
        prop_assert!(after.gpu_layer_count() >= before.gpu_layer_count(),
            "{} -> {} blocks", before.gpu_layer_count(), after.gpu_layer_count());
    }
}

/// A plan becomes one worker per GPU that holds something, or one CPU worker for an instance
/// with no GPU; each carries that device's blocks, output stage, KV and scratch.
#[test]
fn assignments_are_one_worker_per_device_that_holds_something() {
    let m = uniform(10);
    let split = plan(
        &m,
        &[gpu(0, room_for(3)), gpu(1, room_for(3))],
        &PlanOptions::default(),
    )
    .unwrap();
    let workers = split.assignments();
    let devices: Vec<String> = workers.iter().map(|a| a.device.to_string()).collect();
    assert_eq!(devices, ["cuda:0", "cuda:1"]);
    let gpu_blocks: Vec<u32> = workers.iter().flat_map(|a| a.layers.clone()).collect();
    assert_eq!(gpu_blocks, (4..10).collect::<Vec<_>>());
    for (a, d) in workers.iter().zip(&split.replicas[0].devices) {
        assert_eq!(
            (&a.layers, a.output, a.kv_bytes, a.scratch_bytes),
            (&d.layers, d.output, d.kv_bytes, d.scratch_bytes)
        );
    }

    let cpu_only = plan(&m, &[cpu()], &PlanOptions::default()).unwrap();
    let workers = cpu_only.assignments();
    assert_eq!(workers.len(), 1);
    let r = &cpu_only.replicas[0];
    assert_eq!(workers[0].device, DeviceId::cpu());
    assert_eq!(workers[0].layers, (0..10).collect::<Vec<_>>());
    assert!(workers[0].output);
    assert_eq!(
        (workers[0].kv_bytes, workers[0].scratch_bytes),
        (r.cpu_kv_bytes, r.cpu_scratch_bytes)
    );

    let replicas = plan(
        &m,
        &[gpu(0, 24 * GIB), gpu(1, 24 * GIB)],
        &PlanOptions {
            mode: Mode::Replicate,
            ..Default::default()
        },
    )
    .unwrap();
    let workers = replicas.assignments();
    assert_eq!(workers.len(), 2, "one worker per replica");
    assert!(workers.iter().all(|a| a.layers.len() == 10 && a.output));
}

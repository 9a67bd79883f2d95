//! The placement itself: how many blocks fit, how they are spread, where the output goes.

use core::ops::Range;

use super::cost::{block_scratch, gpu_budget, gpu_room, output_scratch, KvCosts};
use super::{
    DeviceId, DeviceSpec, DeviceUse, GpuLayers, HostUse, Mode, Plan, PlanError, PlanOptions,
    Replica,
};
use crate::manifest::ModelManifest;
use crate::units::format_bytes as b;
use crate::GgmlType;

/// Everything a placement needs to price layers, computed once per plan.
struct Costs<'a> {
    manifest: &'a ModelManifest,
    kv: KvCosts,
    block_scratch: u64,
    output_bytes: u64,
    output_scratch: u64,
}

impl Costs<'_> {
    fn layers(&self, range: Range<u32>) -> (u64, u64) {
        range.fold((0, 0), |(w, k), l| {
            (w + self.manifest.block_bytes(l), k + self.kv.layer(l))
        })
    }

    /// What a GPU holding `range` (and maybe the output stage) needs, overhead excluded.
    fn device(&self, range: Range<u32>, output: bool) -> (u64, u64, u64) {
        let (mut weights, kv) = self.layers(range.clone());
        let mut scratch = if range.is_empty() {
            0
        } else {
            self.block_scratch
        };
        if output {
            weights += self.output_bytes;
            // The engine holds the blocks' buffers and the output's logits at once.
            scratch += self.output_scratch;
        }
        (weights, kv, scratch)
    }

    fn fits(&self, range: Range<u32>, output: bool, budget: u64) -> bool {
        let (w, k, s) = self.device(range, output);
        w + k + s <= budget
    }
}

/// Makes a plan, or says why none fits.
pub fn plan(
    manifest: &ModelManifest,
    devices: &[DeviceSpec],
    options: &PlanOptions,
) -> Result<Plan, PlanError> {
    if devices.is_empty() {
        return Err(PlanError::NoDevices);
    }
    if options.parallel == 0 {
        return Err(PlanError::ZeroParallel);
    }
    let supported_kv = [
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::BF16,
        GgmlType::Q8_0,
        GgmlType::Q4_0,
    ];
    if !supported_kv.contains(&options.kv_type) {
        return Err(PlanError::UnsupportedKvType(
            options.kv_type.name().to_owned(),
        ));
    }
    let h = &manifest.hyper_params;
    let context = options
        .context_length
        .filter(|c| *c > 0)
        .unwrap_or(h.context_length)
        .max(1);
    let kv = KvCosts::new(manifest, options, context);
    let costs = Costs {
        manifest,
        block_scratch: block_scratch(manifest, options, u64::from(context)),
        kv,
        output_bytes: manifest.output_bytes(),
        output_scratch: output_scratch(manifest, options),
    };
    let mut reasons = Vec::new();
    let mut warnings = Vec::new();
    explain_kv(&costs, options, context, &mut reasons, &mut warnings);

    let gpus: Vec<&DeviceSpec> = devices.iter().filter(|d| d.id.is_gpu()).collect();
    let mut replicas = Vec::new();
    match options.mode {
        Mode::Split => {
            let name = gpus.first().map_or_else(|| devices[0].id, |g| g.id);
            replicas.push(instance(
                name,
                &gpus,
                &costs,
                options,
                &mut reasons,
                &mut warnings,
            )?);
        }
        Mode::Replicate => {
            for device in devices {
                let own: Vec<&DeviceSpec> = if device.id.is_gpu() {
                    vec![device]
                } else {
                    vec![]
                };
                replicas.push(instance(
                    device.id,
                    &own,
                    &costs,
                    options,
                    &mut reasons,
                    &mut warnings,
                )?);
            }
        }
    }

    let kv_bytes = replicas.iter().map(|r| r.cpu_kv_bytes).sum();
    let scratch_bytes = replicas.iter().map(|r| r.cpu_scratch_bytes).sum();
    let weight_bytes = manifest.file_bytes;
    let needed = weight_bytes + kv_bytes + scratch_bytes;
    if needed > options.host_available_bytes {
        return Err(PlanError::DoesNotFit {
            needed,
            weights: weight_bytes,
            kv: kv_bytes,
            scratch: scratch_bytes,
            available: options.host_available_bytes,
            short: needed - options.host_available_bytes,
        });
    }
    Ok(Plan {
        mode: options.mode,
        context_length: context,
        parallel: options.parallel,
        batch: options.batch,
        swa_full: options.swa_full,
        kv_type: options.kv_type.name().to_owned(),
        block_count: h.block_count,
        replicas,
        host: HostUse {
            weight_bytes,
            kv_bytes,
            scratch_bytes,
            total_bytes: needed,
            available_bytes: options.host_available_bytes,
        },
        reasons,
        warnings,
    })
}

fn explain_kv(
    costs: &Costs<'_>,
    options: &PlanOptions,
    context: u32,
    reasons: &mut Vec<String>,
    warnings: &mut Vec<String>,
) {
    let h = &costs.manifest.hyper_params;
    let full_layer = (0..h.block_count)
        .map(|l| costs.kv.layer(l))
        .max()
        .unwrap_or(0);
    let mut text = format!(
        "context {context} × {} sequence(s): {} KV cache in {}, up to {} per block",
        options.parallel,
        b(costs.kv.total()),
        options.kv_type.name(),
        b(full_layer)
    );
    if costs.kv.swa_layers > 0 {
        text.push_str(&format!(
            "; {} of {} blocks attend to a {}-token window and keep {} cells instead of {}",
            costs.kv.swa_layers,
            h.block_count,
            h.sliding_window.unwrap_or(0),
            costs.kv.swa_cells,
            costs.kv.full_cells
        ));
    }
    reasons.push(text);
    if costs.kv.pattern_unknown {
        warnings.push(format!(
            "{} declares a sliding window but its pattern is unknown here; every block is sized for the full context",
            h.architecture
        ));
    }
    if context > h.context_length && h.context_length > 0 {
        warnings.push(format!(
            "context {context} exceeds the {} tokens the model was trained for",
            h.context_length
        ));
    }
}

/// Splits `n` items in proportion to `weights` (largest remainder; equal when all are zero).
fn apportion(n: u32, weights: &[f64]) -> Vec<u32> {
    let total: f64 = weights.iter().sum();
    let weights: Vec<f64> = if total > 0.0 {
        weights.iter().map(|w| w / total).collect()
    } else {
        vec![1.0 / weights.len() as f64; weights.len()]
    };
    let exact: Vec<f64> = weights.iter().map(|w| w * f64::from(n)).collect();
    let mut counts: Vec<u32> = exact.iter().map(|e| e.floor() as u32).collect();
    let mut left = n.saturating_sub(counts.iter().sum());
    let mut order: Vec<usize> = (0..counts.len()).collect();
    order.sort_by(|&a, &b| (exact[b] - exact[b].floor()).total_cmp(&(exact[a] - exact[a].floor())));
    for i in order.into_iter().cycle().take(counts.len() * 2) {
        if left == 0 {
            break;
        }
        if weights[i] > 0.0 {
            counts[i] += 1;
            left -= 1;
        }
    }
    counts
}

/// Consecutive ranges ending at `end`, of the given lengths, in device order.
fn ranges(end: u32, counts: &[u32]) -> Vec<Range<u32>> {
    let mut start = end - counts.iter().sum::<u32>();
    counts
        .iter()
        .map(|&c| {
            let r = start..start + c;
            start += c;
            r
        })
        .collect()
}

/// Greedy from the output side: the last GPU takes as many of the last blocks as fit, then the one
/// before it, and so on. This offloads the most blocks any contiguous placement can.
fn greedy(n: u32, budgets: &[u64], costs: &Costs<'_>) -> Vec<u32> {
    let mut end = n;
    let mut counts = vec![0; budgets.len()];
    for (i, &budget) in budgets.iter().enumerate().rev() {
        let mut start = end;
        while start > 0 && costs.fits(start - 1..end, false, budget) {
            start -= 1;
        }
        counts[i] = end - start;
        end = start;
    }
    counts
}

fn all_fit(rs: &[Range<u32>], budgets: &[u64], costs: &Costs<'_>) -> bool {
    rs.iter()
        .zip(budgets)
        .all(|(r, &b)| costs.fits(r.clone(), false, b))
}

/// Places one model instance on `gpus` (possibly none) and the CPU.
fn instance(
    name: DeviceId,
    gpus: &[&DeviceSpec],
    costs: &Costs<'_>,
    options: &PlanOptions,
    reasons: &mut Vec<String>,
    warnings: &mut Vec<String>,
) -> Result<Replica, PlanError> {
    let n = costs.manifest.hyper_params.block_count;
    let budgets: Vec<u64> = gpus.iter().map(|g| gpu_budget(g, options)).collect();
    for (g, &budget) in gpus.iter().zip(&budgets) {
        if budget == 0 {
            warnings.push(format!(
                "{}: no room after the {} reserve and {} overhead; it gets no blocks",
                g.id,
                b(options.gpu_reserve_bytes),
                b(options.gpu_overhead_bytes)
            ));
        } else {
            reasons.push(format!(
                "{} may hold {} ({} free{}, less {} reserve and {} overhead)",
                g.id,
                b(budget),
                b(g.free_bytes),
                g.limit_bytes
                    .map(|l| format!(", limit {}", b(l)))
                    .unwrap_or_default(),
                b(options.gpu_reserve_bytes),
                b(options.gpu_overhead_bytes)
            ));
        }
    }
    let explicit_split = match &options.tensor_split {
        Some(split) if !gpus.is_empty() => {
            if split.len() != gpus.len() {
                return Err(PlanError::TensorSplitLength {
                    given: split.len(),
                    gpus: gpus.len(),
                });
            }
            if split.iter().any(|w| !(w.is_finite() && *w >= 0.0))
                || split.iter().sum::<f64>() <= 0.0
            {
                return Err(PlanError::TensorSplitInvalid);
            }
            Some(split.clone())
        }
        _ => None,
    };

    let counts = if gpus.is_empty() {
        Vec::new()
    } else {
        choose_counts(
            n,
            gpus,
            &budgets,
            explicit_split.as_deref(),
            costs,
            options,
            reasons,
            warnings,
        )?
    };
    let offloaded: u32 = counts.iter().sum();
    let rs = ranges(n, &counts);

    // The output stage follows the last block onto its GPU, when every block is on a GPU.
    let last_gpu = rs.iter().rposition(|r| !r.is_empty());
    let mut output_on = None;
    if let (true, Some(i)) = (offloaded == n && n > 0, last_gpu) {
        if costs.fits(rs[i].clone(), true, budgets[i]) {
            output_on = Some(i);
            reasons.push(format!(
                "output stage ({}) on {} with the last block",
                b(costs.output_bytes),
                gpus[i].id
            ));
        } else {
            reasons.push(format!(
                "output stage ({}) stays on the CPU: {} has no room for it beside its blocks",
                b(costs.output_bytes),
                gpus[i].id
            ));
        }
    } else if !gpus.is_empty() {
        reasons.push(
            "output stage on the CPU: not every block is on a GPU (as llama.cpp places it)".into(),
        );
    }

    let devices: Vec<DeviceUse> = gpus
        .iter()
        .zip(&rs)
        .enumerate()
        .map(|(i, (g, r))| {
            let output = output_on == Some(i);
            let (weight_bytes, kv_bytes, scratch_bytes) = costs.device(r.clone(), output);
            let used = !r.is_empty() || output;
            let overhead_bytes = if used { options.gpu_overhead_bytes } else { 0 };
            DeviceUse {
                device: g.id,
                layers: r.clone().collect(),
                output,
                weight_bytes,
                kv_bytes,
                scratch_bytes,
                overhead_bytes,
                total_bytes: weight_bytes + kv_bytes + scratch_bytes + overhead_bytes,
                budget_bytes: gpu_room(g, options),
            }
        })
        .collect();

    let cpu_layers: Vec<u32> = (0..n - offloaded).collect();
    let cpu_output = output_on.is_none();
    let (_, cpu_kv_bytes) = costs.layers(0..n - offloaded);
    let mut cpu_scratch_bytes = if cpu_layers.is_empty() {
        0
    } else {
        costs.block_scratch
    };
    if cpu_output {
        cpu_scratch_bytes += costs.output_scratch;
    }
    if !gpus.is_empty() && offloaded < n {
        reasons.push(match offloaded {
            0 => format!("{name}: no block fits on a GPU; all {n} run on the CPU from the shared pages"),
            _ => format!(
                "{name}: {offloaded} of {n} blocks on GPUs; blocks 0-{} run on the CPU from the shared pages",
                n - offloaded - 1
            ),
        });
    } else if !gpus.is_empty() {
        reasons.push(format!("{name}: all {n} blocks on GPUs"));
    }
    Ok(Replica {
        name,
        devices,
        cpu_layers,
        cpu_output,
        cpu_kv_bytes,
        cpu_scratch_bytes,
    })
}

/// How many blocks each GPU takes, honouring a `gpu_layers` override and a tensor split.
#[allow(clippy::too_many_arguments)]
fn choose_counts(
    n: u32,
    gpus: &[&DeviceSpec],
    budgets: &[u64],
    explicit_split: Option<&[f64]>,
    costs: &Costs<'_>,
    options: &PlanOptions,
    reasons: &mut Vec<String>,
    warnings: &mut Vec<String>,
) -> Result<Vec<u32>, PlanError> {
    let weights: Vec<f64> = explicit_split
        .map(<[f64]>::to_vec)
        .unwrap_or_else(|| budgets.iter().map(|&b| b as f64).collect());
    let spread = |count: u32| {
        let counts = apportion(count, &weights);
        let rs = ranges(n, &counts);
        all_fit(&rs, budgets, costs).then_some(counts)
    };
    let ratio_text = || match explicit_split {
        Some(s) => format!(
            "by --tensor-split {}",
            s.iter()
                .map(|w| w.to_string())
                .collect::<Vec<_>>()
                .join(":")
        ),
        None => "in proportion to each GPU's room".to_owned(),
    };

    if let GpuLayers::Count(requested) = options.gpu_layers {
        let count = requested.min(n);
        if requested > n {
            warnings.push(format!(
                "--gpu-layers {requested} is more than the {n} blocks; offloading all {n}"
            ));
        }
        let counts = spread(count).or_else(|| {
            // Without an explicit split, any placement that fits will do.
            let greedy = greedy(n, budgets, costs);
            (explicit_split.is_none() && greedy.iter().sum::<u32>() >= count)
                .then(|| trim_to(greedy, count))
        });
        return match counts {
            Some(c) => {
                reasons.push(format!(
                    "--gpu-layers {count}: the last {count} blocks spread {}",
                    ratio_text()
                ));
                Ok(c)
            }
            None => {
                let counts = apportion(count, &weights);
                let rs = ranges(n, &counts);
                let (i, r) = rs
                    .iter()
                    .enumerate()
                    .find(|(i, r)| !costs.fits((*r).clone(), false, budgets[*i]))
                    .map(|(i, r)| (i, r.clone()))
                    .unwrap_or((0, 0..0));
                let (w, k, s) = costs.device(r, false);
                Err(PlanError::OverrideDoesNotFit {
                    requested,
                    device: gpus[i].id,
                    needed: w + k + s,
                    budget: budgets[i],
                })
            }
        };
    }

    let greedy_counts = greedy(n, budgets, costs);
    let most: u32 = greedy_counts.iter().sum();
    if explicit_split.is_none() {
        // Balance the blocks by room when that fits as many as the greedy placement, which
        // packs the last GPU first.
        if let Some(balanced) = spread(most) {
            reasons.push(format!("{most} blocks spread {}", ratio_text()));
            return Ok(balanced);
        }
        reasons.push(format!(
            "{most} blocks packed from the last GPU backwards (an even spread would not fit)"
        ));
        return Ok(greedy_counts);
    }
    // An explicit split: the most blocks that fit with that split.
    let count = (0..=most).rev().find(|&c| spread(c).is_some()).unwrap_or(0);
    reasons.push(format!("{count} blocks spread {}", ratio_text()));
    Ok(spread(count).unwrap_or_else(|| vec![0; gpus.len()]))
}

/// Reduces greedy counts (taken from the last GPU backwards) to `count` blocks in all, keeping
/// the output side.
fn trim_to(mut counts: Vec<u32>, count: u32) -> Vec<u32> {
    let mut excess = counts.iter().sum::<u32>() - count;
    for c in counts.iter_mut() {
        let cut = excess.min(*c);
        *c -= cut;
        excess -= cut;
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apportion_is_exact_and_proportional() {
        assert_eq!(apportion(10, &[1.0, 1.0]), vec![5, 5]);
        assert_eq!(apportion(10, &[3.0, 1.0]), vec![8, 2]);
        assert_eq!(apportion(7, &[0.0, 0.0, 0.0]).iter().sum::<u32>(), 7);
        assert_eq!(apportion(5, &[0.0, 1.0]), vec![0, 5]);
        assert_eq!(apportion(0, &[1.0]), vec![0]);
    }

    #[test]
    fn ranges_end_at_the_last_block() {
        assert_eq!(ranges(10, &[2, 3]), vec![5..7, 7..10]);
        assert_eq!(trim_to(vec![2, 5], 4), vec![0, 4]);
    }
}

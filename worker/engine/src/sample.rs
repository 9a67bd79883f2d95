//! Choosing the next token from a row of logits: logit bias, penalties, temperature, top-k,
//! top-p and min-p, then a draw from a seeded stream.
//!
//! The order is Hugging Face's and vLLM's: bias and penalties change the logits; temperature
//! scales them; top-k, top-p and min-p cut the tail of the distribution that temperature made;
//! a uniform draw picks from what is left. Temperature 0 is greedy (after bias and penalties),
//! ties going to the lowest id. The stream is xoshiro256** seeded through splitmix64: the same
//! seed and the same logits give the same tokens on any worker, and the engine's logits do not
//! depend on what else shares the step.

use std::collections::HashMap;

use modelhost_protocol::wire::{Sampling, TokenLogprob};

/// A request's sampling state: its settings, the tokens it has seen, and its random stream.
pub struct Sampler {
    params: Sampling,
    rng: Rng,
    /// Every distinct token of the prompt and the output, sorted (repetition penalty).
    seen: Vec<u32>,
    /// How often each token occurs in the output (presence and frequency penalties).
    output_counts: HashMap<u32, u32>,
    /// Candidate ids and their values, reused between tokens.
    candidates: Vec<(u32, f32)>,
}

/// A chosen token, with its log-probability under the model's own distribution when asked.
#[derive(Debug, Clone, PartialEq)]
pub struct Choice {
    pub token: u32,
    pub logprob: Option<f32>,
    /// The most likely tokens, best first.
    pub top: Vec<TokenLogprob>,
}

impl Sampler {
    pub fn new(params: Sampling, prompt: &[u32]) -> Sampler {
        let mut seen = prompt.to_vec();
        seen.sort_unstable();
        seen.dedup();
        Sampler {
            rng: Rng::new(params.seed),
            params,
            seen,
            output_counts: HashMap::new(),
            candidates: Vec::new(),
        }
    }

    /// Records a generated token for the penalties.
    pub fn accept(&mut self, token: u32) {
        *self.output_counts.entry(token).or_insert(0) += 1;
        if let Err(at) = self.seen.binary_search(&token) {
            self.seen.insert(at, token);
        }
    }

    /// Picks a token from `logits` (one row over the vocabulary), never one of `banned`.
    /// `logprobs`: report the chosen token's log-probability and this many alternatives, from
    /// the logits as the model gave them.
    pub fn sample(&mut self, logits: &[f32], banned: &[u32], logprobs: Option<u8>) -> Choice {
        let reported = logprobs.map(|n| log_softmax_top(logits, usize::from(n)));
        let token = self.choose(logits, banned);
        let (logprob, top) = match reported {
            Some((norm, top)) => (Some(logits[token as usize] - norm), top),
            None => (None, Vec::new()),
        };
        Choice {
            token,
            logprob,
            top,
        }
    }

    fn choose(&mut self, logits: &[f32], banned: &[u32]) -> u32 {
        let p = &self.params;
        let mut adjusted: Vec<(u32, f32)> = Vec::new();
        // The few logits that bias or penalties change, adjusted apart from the row.
        let mut adjust = |token: u32, f: &dyn Fn(f32) -> f32| {
            if let Some(entry) = adjusted.iter_mut().find(|(t, _)| *t == token) {
                entry.1 = f(entry.1);
            } else if let Some(&v) = logits.get(token as usize) {
                adjusted.push((token, f(v)));
            }
        };
        if p.repetition_penalty != 1.0 {
            let r = p.repetition_penalty;
            for &t in &self.seen {
                adjust(t, &|v| if v > 0.0 { v / r } else { v * r });
            }
        }
        if p.presence_penalty != 0.0 || p.frequency_penalty != 0.0 {
            for (&t, &n) in &self.output_counts {
                let minus = p.presence_penalty + p.frequency_penalty * n as f32;
                adjust(t, &|v| v - minus);
            }
        }
        for &(t, bias) in &p.logit_bias {
            adjust(t, &|v| v + bias);
        }
        for &t in banned {
            adjust(t, &|_| f32::NEG_INFINITY);
        }
        adjusted.sort_unstable_by_key(|&(t, _)| t);
        let value = |t: u32| match adjusted.binary_search_by_key(&t, |&(id, _)| id) {
            Ok(i) => adjusted[i].1,
            Err(_) => logits[t as usize],
        };

        if p.temperature == 0.0 {
            return greedy(logits, &adjusted, value);
        }
        // Candidates: every token, or the top k (a partial selection, not a sort of the
        // whole vocabulary).
        let cands = &mut self.candidates;
        cands.clear();
        cands.extend((0..logits.len() as u32).map(|t| (t, value(t) / p.temperature)));
        cands.retain(|&(_, v)| v > f32::NEG_INFINITY && !v.is_nan());
        if cands.is_empty() {
            // Everything banned or not a number: the least bad answer is the model's own.
            return argmax(logits);
        }
        let by_value = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
        if p.top_k > 0 && (p.top_k as usize) < cands.len() {
            cands.select_nth_unstable_by(p.top_k as usize - 1, by_value);
            cands.truncate(p.top_k as usize);
        }
        // Probabilities over the candidates.
        let max = cands.iter().map(|c| c.1).fold(f32::NEG_INFINITY, f32::max);
        for c in cands.iter_mut() {
            c.1 = exp_nonpositive(c.1 - max);
        }
        let sum: f64 = cands.iter().map(|c| f64::from(c.1)).sum();
        let inv = (1.0 / sum) as f32;
        for c in cands.iter_mut() {
            c.1 *= inv;
        }
        if p.min_p > 0.0 {
            // The most likely candidate has probability exp(0) * inv.
            let floor = p.min_p * inv;
            cands.retain(|c| c.1 >= floor);
        }
        if p.top_p < 1.0 {
            top_p_cut(cands, p.top_p, by_value);
        }
        // Draw over what is left in id order, so that the draw does not depend on how the
        // selection happened to leave the candidates. Without a cut they are in id order
        // already, and the sort only checks that: sorting the whole vocabulary by value for
        // each token (the earlier order) took 15 ms on gemma's 262,144 tokens, more than the
        // forward pass.
        cands.sort_unstable_by_key(|c| c.0);
        let total: f64 = cands.iter().map(|c| f64::from(c.1)).sum();
        let mut target = self.rng.next_f64() * total;
        for c in cands.iter() {
            target -= f64::from(c.1);
            if target < 0.0 {
                return c.0;
            }
        }
        cands.last().map_or(0, |c| c.0)
    }
}

/// The smallest set of most likely candidates whose probabilities reach `top_p`. Sorting the
/// whole vocabulary for every token would cost more than the step on a small model, so the
/// head is selected in growing sizes until it holds enough mass.
fn top_p_cut(
    cands: &mut Vec<(u32, f32)>,
    top_p: f32,
    by_value: impl Fn(&(u32, f32), &(u32, f32)) -> std::cmp::Ordering + Copy,
) {
    let mut head = 64usize;
    loop {
        let n = head.min(cands.len());
        if n < cands.len() {
            cands.select_nth_unstable_by(n - 1, by_value);
        }
        cands[..n].sort_unstable_by(by_value);
        let mut mass = 0.0f32;
        for (i, c) in cands[..n].iter().enumerate() {
            mass += c.1;
            if mass >= top_p {
                cands.truncate(i + 1);
                return;
            }
        }
        if n == cands.len() {
            return;
        }
        head *= 4;
    }
}

/// The greedy choice: the largest of the logits as `adjusted` changes them (sorted by id),
/// ties to the lowest id; token 0 when every value is -inf or not a number. `value` gives a
/// token's adjusted logit.
fn greedy(logits: &[f32], adjusted: &[(u32, f32)], value: impl Fn(u32) -> f32) -> u32 {
    let raw = argmax(logits);
    if adjusted.binary_search_by_key(&raw, |&(t, _)| t).is_ok() {
        // The best raw logit was changed (a banned token, say): every token is a candidate.
        return argmax_by(logits.len(), value);
    }
    // Otherwise the best token left alone is `raw`, and only the changed ones can beat it.
    // (`raw` is 0 when no logit is above -inf: a NaN there must not block the changed ones.)
    let raw_value = logits
        .get(raw as usize)
        .copied()
        .filter(|&v| v > f32::NEG_INFINITY)
        .unwrap_or(f32::NEG_INFINITY);
    let mut best = (raw, raw_value);
    for &(t, v) in adjusted {
        if v > best.1 || (v == best.1 && v > f32::NEG_INFINITY && t < best.0) {
            best = (t, v);
        }
    }
    best.0
}

/// The largest value's index, ties to the lowest; 0 when every value is -inf or not a number.
fn argmax_by(n: usize, value: impl Fn(u32) -> f32) -> u32 {
    let mut best = (0u32, f32::NEG_INFINITY);
    for t in 0..n as u32 {
        let v = value(t);
        if v > best.1 {
            best = (t, v);
        }
    }
    best.0
}

/// [`argmax_by`] over a row of logits, at the memory's speed: the maximum in sixteen lanes
/// (which the compiler vectorizes), then the first index that holds it. One pass of the
/// plain loop took 0.6 ms over gemma's 262,144 logits, 5% of a decode step; this one 0.1 ms.
pub fn argmax(logits: &[f32]) -> u32 {
    const LANES: usize = 16;
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let chunks = logits.chunks_exact(LANES);
    let rest = chunks.remainder();
    for chunk in chunks {
        for (lane, &v) in lanes.iter_mut().zip(chunk) {
            // `>` and not `f32::max`: a NaN never wins, as in `argmax_by`.
            if v > *lane {
                *lane = v;
            }
        }
    }
    let mut max = f32::NEG_INFINITY;
    for &v in lanes.iter().chain(rest) {
        if v > max {
            max = v;
        }
    }
    if max == f32::NEG_INFINITY {
        return 0;
    }
    logits.iter().position(|&v| v == max).unwrap_or(0) as u32
}

/// e^x for x ≤ 0, within 2 units in the last place, and 0 below -80 (where e^x < 2e-35, nothing
/// against the 1 that the largest candidate gets). Written without a call so that the loop
/// over the vocabulary vectorizes: libm's `expf`, one call per token, was a millisecond of
/// each draw over gemma's 262,144 tokens.
#[inline]
fn exp_nonpositive(x: f32) -> f32 {
    // e^x = 2^n · e^r with n = round(x / ln 2) and |r| ≤ ln 2 / 2; ln 2 in two parts so that
    // n · ln 2 is exact enough (Cody and Waite).
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // Adding then subtracting 1.5 · 2^23 rounds to the nearest integer, in any vector unit.
    const ROUND: f32 = 12_582_912.0;
    let clamped = x.max(-80.0);
    let n = (clamped * std::f32::consts::LOG2_E + ROUND) - ROUND;
    let r = (clamped - n * LN2_HI) - n * LN2_LO;
    // Taylor to r⁷: the next term is below 5e-9 of the result for |r| ≤ 0.347.
    let p = 1.0
        + r * (1.0
            + r * (1.0 / 2.0
                + r * (1.0 / 6.0
                    + r * (1.0 / 24.0
                        + r * (1.0 / 120.0 + r * (1.0 / 720.0 + r * (1.0 / 5040.0)))))));
    // Scale by 2^n in the exponent bits: n ≥ -116, so the result stays a normal number.
    let scaled = f32::from_bits((p.to_bits() as i32).wrapping_add((n as i32) << 23) as u32);
    if x < -80.0 {
        0.0
    } else {
        scaled
    }
}

/// log Σ exp(logits), and the `n` most likely tokens with their log-probabilities.
fn log_softmax_top(logits: &[f32], n: usize) -> (f32, Vec<TokenLogprob>) {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits.iter().map(|&v| f64::from((v - max).exp())).sum();
    let norm = max + sum.ln() as f32;
    let mut idx: Vec<(u32, f32)> = Vec::new();
    if n > 0 {
        idx = logits
            .iter()
            .enumerate()
            .map(|(i, &v)| (i as u32, v))
            .collect();
        let by_value = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
        let n = n.min(idx.len());
        if n < idx.len() {
            idx.select_nth_unstable_by(n - 1, by_value);
            idx.truncate(n);
        }
        idx.sort_unstable_by(by_value);
    }
    let top = idx
        .into_iter()
        .map(|(token, v)| TokenLogprob {
            token,
            logprob: v - norm,
        })
        .collect();
    (norm, top)
}

/// xoshiro256**, seeded through splitmix64.
struct Rng([u64; 4]);

impl Rng {
    fn new(seed: u64) -> Rng {
        let mut x = seed;
        let mut next = || {
            x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        };
        Rng([next(), next(), next(), next()])
    }

    fn next_u64(&mut self) -> u64 {
        let s = &mut self.0;
        let result = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// Uniform in [0, 1).
    fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sampling(temperature: f32) -> Sampling {
        Sampling {
            temperature,
            seed: 7,
            ..Sampling::default()
        }
    }

    #[test]
    fn xoshiro_matches_its_published_output() {
        // The reference implementation seeded with state [1, 2, 3, 4] gives 11520, 0,
        // 1509978240, 1215971899390074240 (xoshiro256** by Blackman and Vigna).
        let mut rng = Rng([1, 2, 3, 4]);
        let got: Vec<u64> = (0..4).map(|_| rng.next_u64()).collect();
        assert_eq!(got, [11520, 0, 1_509_978_240, 1_215_971_899_390_074_240]);
    }

    #[test]
    fn exp_nonpositive_is_within_two_ulps_of_libm() {
        let mut x = 0.0f32;
        while x > -80.0 {
            let (got, want) = (exp_nonpositive(x), x.exp());
            assert!(
                (got - want).abs() <= 2.0 * f32::EPSILON * want,
                "e^{x}: {got} against {want}"
            );
            x -= 0.000_731;
        }
        assert_eq!(exp_nonpositive(0.0), 1.0);
        assert_eq!(exp_nonpositive(-80.5), 0.0);
        assert_eq!(exp_nonpositive(f32::NEG_INFINITY), 0.0);
    }

    #[test]
    fn argmax_agrees_with_the_plain_loop() {
        let plain = |x: &[f32]| argmax_by(x.len(), |t| x[t as usize]);
        let mut rows: Vec<Vec<f32>> = vec![
            vec![],
            vec![f32::NAN],
            vec![f32::NEG_INFINITY; 40],
            vec![1.0; 37],
            vec![f32::NAN, 2.0, f32::NAN, 2.0],
        ];
        // Ties, NaNs and -inf placed in every lane and in the tail past the last full chunk.
        for len in [15usize, 16, 17, 33, 100] {
            for at in 0..len {
                let mut row: Vec<f32> = (0..len).map(|i| (i % 7) as f32).collect();
                row[at] = 9.0;
                rows.push(row.clone());
                row[(at * 5) % len] = 9.0;
                row[(at * 3) % len] = f32::NAN;
                rows.push(row.clone());
                row.iter_mut().for_each(|v| *v = f32::NEG_INFINITY);
                row[at] = f32::NAN;
                rows.push(row);
            }
        }
        for row in &rows {
            assert_eq!(argmax(row), plain(row), "{row:?}");
        }
    }

    #[test]
    fn greedy_with_changed_logits_takes_the_best_of_both() {
        let logits = [0.0, 3.0, 1.0, 3.0, 2.0];
        let plain = |adjusted: &[(u32, f32)]| {
            argmax_by(logits.len(), |t| {
                adjusted
                    .iter()
                    .find(|a| a.0 == t)
                    .map_or(logits[t as usize], |a| a.1)
            })
        };
        for adjusted in [
            vec![],
            vec![(1, f32::NEG_INFINITY)],
            vec![(1, f32::NEG_INFINITY), (3, f32::NEG_INFINITY)],
            vec![(0, 3.0)],
            vec![(4, 3.0)],
            vec![(4, 5.0)],
            vec![(0, f32::NAN), (2, 3.0)],
            vec![
                (0, f32::NEG_INFINITY),
                (1, f32::NEG_INFINITY),
                (2, f32::NEG_INFINITY),
                (3, f32::NEG_INFINITY),
                (4, f32::NEG_INFINITY),
            ],
        ] {
            let value = |t: u32| match adjusted.binary_search_by_key(&t, |&(id, _)| id) {
                Ok(i) => adjusted[i].1,
                Err(_) => logits[t as usize],
            };
            assert_eq!(
                greedy(&logits, &adjusted, value),
                plain(&adjusted),
                "{adjusted:?}"
            );
        }
        // No raw logit above -inf (a NaN at 0): a changed one still wins.
        let logits = [f32::NAN, f32::NEG_INFINITY, f32::NEG_INFINITY];
        let adjusted = [(2, 1.0)];
        let value = |t: u32| if t == 2 { 1.0 } else { logits[t as usize] };
        assert_eq!(greedy(&logits, &adjusted, value), 2);
    }

    #[test]
    fn greedy_takes_the_best_and_ties_go_to_the_lowest_id() {
        let mut s = Sampler::new(sampling(0.0), &[]);
        assert_eq!(s.sample(&[0.0, 3.0, 1.0, 3.0], &[], None).token, 1);
        // Banned, the best gives way to the next.
        assert_eq!(s.sample(&[0.0, 3.0, 1.0, 3.0], &[1, 3], None).token, 2);
    }

    #[test]
    fn the_same_seed_draws_the_same_tokens_and_another_seed_others() {
        let logits: Vec<f32> = (0..1000).map(|i| ((i * 37) % 101) as f32 / 20.0).collect();
        let draw = |seed| {
            let mut s = Sampler::new(
                Sampling {
                    temperature: 1.0,
                    seed,
                    ..Sampling::default()
                },
                &[],
            );
            (0..50)
                .map(|_| s.sample(&logits, &[], None).token)
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(1), draw(1));
        assert_ne!(draw(1), draw(2));
    }

    #[test]
    fn draws_follow_the_distribution() {
        // Probabilities 0.5, 0.25, 0.125, 0.125 (logits ln p); 40,000 draws.
        let logits = [0.5f32.ln(), 0.25f32.ln(), 0.125f32.ln(), 0.125f32.ln()];
        let mut s = Sampler::new(sampling(1.0), &[]);
        let mut counts = [0u32; 4];
        for _ in 0..40_000 {
            counts[s.sample(&logits, &[], None).token as usize] += 1;
        }
        let want = [20_000.0, 10_000.0, 5_000.0, 5_000.0];
        for (c, w) in counts.iter().zip(want) {
            // Five standard deviations of a binomial count at most.
            assert!(
                (f64::from(*c) - w).abs() < 5.0 * (w * 0.5f64).sqrt(),
                "{counts:?}"
            );
        }
    }

    #[test]
    fn top_k_top_p_and_min_p_cut_the_tail() {
        let logits = [0.4f32.ln(), 0.3f32.ln(), 0.2f32.ln(), 0.1f32.ln()];
        let seen = |params: Sampling| {
            let mut s = Sampler::new(params, &[]);
            let mut seen = [false; 4];
            for _ in 0..2000 {
                seen[s.sample(&logits, &[], None).token as usize] = true;
            }
            seen
        };
        let base = sampling(1.0);
        assert_eq!(seen(base.clone()), [true; 4]);
        assert_eq!(
            seen(Sampling {
                top_k: 2,
                ..base.clone()
            }),
            [true, true, false, false]
        );
        // 0.4 + 0.3 reaches 0.65; 0.4 alone does not.
        assert_eq!(
            seen(Sampling {
                top_p: 0.65,
                ..base.clone()
            }),
            [true, true, false, false]
        );
        // 0.45 of the best's 0.4 is 0.18: the last (0.1) goes.
        assert_eq!(
            seen(Sampling {
                min_p: 0.45,
                ..base.clone()
            }),
            [true, true, true, false]
        );
    }

    #[test]
    fn penalties_and_bias_move_the_logits_as_defined() {
        // Token 0 leads by 1.0. A repetition penalty of 2 halves its positive logit (it is in
        // the prompt); token 1 then leads.
        let logits = [2.0f32, 1.5, -1.0];
        let mut s = Sampler::new(
            Sampling {
                repetition_penalty: 2.0,
                ..sampling(0.0)
            },
            &[0],
        );
        assert_eq!(s.sample(&logits, &[], None).token, 1);
        // Presence and frequency count only the output: after token 1 twice, 1.5 - (0.3 +
        // 2 * 0.2) = 0.8 < 2.0.
        let mut s = Sampler::new(
            Sampling {
                presence_penalty: 0.3,
                frequency_penalty: 0.2,
                ..sampling(0.0)
            },
            &[1],
        );
        assert_eq!(s.sample(&[1.0, 1.5, 0.0], &[], None).token, 1);
        s.accept(1);
        s.accept(1);
        assert_eq!(s.sample(&[1.0, 1.5, 0.0], &[], None).token, 0);
        // A bias of +100 forces a token; -100 removes it.
        let mut s = Sampler::new(
            Sampling {
                logit_bias: vec![(2, 100.0), (0, -100.0)],
                ..sampling(1.0)
            },
            &[],
        );
        for _ in 0..100 {
            assert_eq!(s.sample(&logits, &[], None).token, 2);
        }
    }

    #[test]
    fn logprobs_are_the_models_own() {
        let logits = [1.0f32, 2.0, 3.0];
        let mut s = Sampler::new(
            Sampling {
                logit_bias: vec![(0, 100.0)],
                ..sampling(0.0)
            },
            &[],
        );
        let c = s.sample(&logits, &[], Some(2));
        assert_eq!(c.token, 0);
        let norm = (1f32.exp() + 2f32.exp() + 3f32.exp()).ln();
        assert!((c.logprob.unwrap() - (1.0 - norm)).abs() < 1e-5);
        assert_eq!(c.top.len(), 2);
        assert_eq!((c.top[0].token, c.top[1].token), (2, 1));
        assert!((c.top[0].logprob - (3.0 - norm)).abs() < 1e-5);
    }
}

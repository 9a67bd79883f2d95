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
    /// The tempered logits of the whole vocabulary, reused between tokens.
    tempered: Vec<f32>,
    /// Their exponentials less the best's (unnormalized probabilities), reused likewise.
    weights: Vec<f32>,
    /// Per bucket of distance below the best logit: tokens, or probability mass.
    histogram: Vec<f64>,
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
            tempered: Vec::new(),
            weights: Vec::new(),
            histogram: Vec::new(),
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
        // The tempered logits of the whole vocabulary (a NaN counts as banned) and their
        // exponentials, each in one pass that vectorizes: nothing below sorts or selects over
        // the whole vocabulary.
        let t = p.temperature;
        let tempered = &mut self.tempered;
        tempered.clear();
        tempered.resize(logits.len(), 0.0);
        wide::temper(logits, t, tempered);
        for &(token, v) in &adjusted {
            if let Some(x) = tempered.get_mut(token as usize) {
                *x = not_nan(v / t);
            }
        }
        let max = max_of(tempered);
        if max == f32::NEG_INFINITY {
            // Everything banned or not a number: the least bad answer is the model's own.
            return argmax(logits);
        }
        let weights = &mut self.weights;
        weights.clear();
        weights.resize(tempered.len(), 0.0);
        wide::weigh(tempered, max, weights);
        let dist = Tempered {
            values: tempered,
            weights,
            max,
            total: mass(weights),
        };
        let cuts = Cuts::new(p, tempered);
        if cuts.none() {
            // The whole distribution, drawn from in id order.
            return draw(
                weights.iter().enumerate().map(|(t, &w)| (t as u32, w)),
                dist.total,
                &mut self.rng,
            );
        }
        cuts.survivors(&dist, &mut self.histogram, &mut self.candidates);
        let total = mass_of(&self.candidates);
        draw(self.candidates.iter().copied(), total, &mut self.rng)
    }
}

/// Logits that are not a number take no part: they count as -inf.
#[inline]
fn not_nan(x: f32) -> f32 {
    if x.is_nan() {
        f32::NEG_INFINITY
    } else {
        x
    }
}

/// The candidates' order for the cuts: the most likely first, ties to the lowest id.
fn by_value(a: &(u32, f32), b: &(u32, f32)) -> std::cmp::Ordering {
    b.1.total_cmp(&a.1).then(a.0.cmp(&b.0))
}

/// A sum of non-negative weights in eight f64 lanes, which vectorizes.
fn mass(weights: &[f32]) -> f64 {
    let mut lanes = [0f64; 8];
    let chunks = weights.chunks_exact(8);
    let rest = chunks.remainder();
    for chunk in chunks {
        for (lane, &w) in lanes.iter_mut().zip(chunk) {
            *lane += f64::from(w);
        }
    }
    lanes.iter().sum::<f64>() + rest.iter().map(|&w| f64::from(w)).sum::<f64>()
}

/// The sum of candidates' probabilities, in order (after a cut they are few).
fn mass_of(cands: &[(u32, f32)]) -> f64 {
    cands.iter().map(|c| f64::from(c.1)).sum()
}

/// The tempered distribution over the whole vocabulary.
struct Tempered<'a> {
    /// Tempered logits, -inf for a banned token.
    values: &'a [f32],
    /// e^(value - max): the unnormalized probabilities.
    weights: &'a [f32],
    max: f32,
    /// [`mass`] of `weights`.
    total: f64,
}

/// The cuts of the tempered distribution a request asks for.
struct Cuts {
    /// Top-k, where it leaves fewer tokens than the finite ones.
    top_k: Option<usize>,
    top_p: f32,
    min_p: f32,
}

/// How far below the best tempered logit the candidates reach.
#[derive(Clone, Copy)]
struct Bound {
    distance: f32,
    /// Top-p's nucleus set it (not top-k or min-p): the exact cut may need more.
    nucleus: bool,
}

/// Buckets of a distance below the best tempered logit: its f32 bits less the low 19, so
/// each bucket spans a sixteenth of a binade (a distance's bits grow with it).
const BUCKET_SHIFT: u32 = 19;

impl Cuts {
    fn new(p: &Sampling, tempered: &[f32]) -> Cuts {
        let k = p.top_k as usize;
        // Counting the finite tokens is a pass over the vocabulary: only for top-k.
        let cuts_k = k > 0 && k < tempered.iter().filter(|&&x| x > f32::NEG_INFINITY).count();
        Cuts {
            top_k: cuts_k.then_some(k),
            top_p: p.top_p,
            min_p: p.min_p,
        }
    }

    /// No cut: every token keeps its probability.
    fn none(&self) -> bool {
        self.top_k.is_none() && self.top_p >= 1.0 && self.min_p <= 0.0
    }

    /// Fills `cands` with the tokens that survive the cuts and their probabilities, in id
    /// order: the same as [`Cuts::candidates`] over every finite token, but reading only the
    /// tokens near the best, as a histogram bounds them.
    fn survivors(&self, dist: &Tempered, histogram: &mut Vec<f64>, cands: &mut Vec<(u32, f32)>) {
        let bound = self.bound(dist, histogram);
        if !self.candidates(dist, bound, cands) {
            // The histogram's mass (in f64, by bucket) and the cut's (in f32, token by token)
            // disagreed at the edge of the nucleus: take every token.
            let all = self.candidates(dist, None, cands);
            debug_assert!(all);
        }
    }

    /// A distance below the best that no survivor of the cuts exceeds, or `None` when the
    /// cuts cannot be bounded. A whole bucket is taken at the edge, so the bound holds more
    /// tokens than survive; `candidates` then cuts exactly.
    fn bound(&self, dist: &Tempered, histogram: &mut Vec<f64>) -> Option<Bound> {
        let max = dist.max;
        let bucket = |x: f32| ((max - x).to_bits() >> BUCKET_SHIFT) as usize;
        let edge = |b: usize| f32::from_bits((((b + 1) << BUCKET_SHIFT) - 1) as u32);
        histogram.clear();
        histogram.resize((f32::INFINITY.to_bits() >> BUCKET_SHIFT) as usize + 1, 0.0);
        if let Some(k) = self.top_k {
            // Top-k: the bucket where the count from the best reaches k. (Min-p and top-p then
            // work on the top k's own distribution, so they cannot narrow this.)
            for &x in dist.values {
                histogram[bucket(x)] += 1.0;
            }
            let mut count = 0.0;
            for (b, &n) in histogram.iter().enumerate() {
                count += n;
                if count >= k as f64 {
                    return Some(Bound {
                        distance: edge(b),
                        nucleus: false,
                    });
                }
            }
            return None;
        }
        let mut bound: Option<Bound> = None;
        if self.min_p > 0.0 {
            // p ≥ min_p · p_best  ⟺  max - x ≤ -ln(min_p); a little more, for the rounding.
            bound = Some(Bound {
                distance: -self.min_p.ln() * (1.0 + 1e-5) + 1e-5,
                nucleus: false,
            });
        }
        if self.top_p < 1.0 {
            for (&x, &w) in dist.values.iter().zip(dist.weights) {
                histogram[bucket(x)] += f64::from(w);
            }
            let mut reached = 0.0;
            for (b, &m) in histogram.iter().enumerate() {
                reached += m;
                if reached >= f64::from(self.top_p) * dist.total {
                    let nucleus = Bound {
                        distance: edge(b),
                        nucleus: true,
                    };
                    if bound.is_none_or(|o| nucleus.distance < o.distance) {
                        bound = Some(nucleus);
                    }
                    break;
                }
            }
        }
        bound
    }

    /// Fills `cands` with what survives the cuts, as probabilities, in id order: from the
    /// tokens within `bound` below the best (every finite one where `None`). `false` when
    /// top-p's nucleus reached past them (only possible where the nucleus set the bound).
    fn candidates(
        &self,
        dist: &Tempered,
        bound: Option<Bound>,
        cands: &mut Vec<(u32, f32)>,
    ) -> bool {
        cands.clear();
        let within = bound.map_or(f32::INFINITY, |b| b.distance);
        let nucleus_bound = bound.is_some_and(|b| b.nucleus);
        let max = dist.max;
        cands.extend(
            dist.values
                .iter()
                .enumerate()
                .filter(|&(_, &x)| x > f32::NEG_INFINITY && max - x <= within)
                .map(|(t, &x)| (t as u32, x)),
        );
        // Probabilities: over the top k where they cut, otherwise over the whole vocabulary.
        let sum = if let Some(k) = self.top_k {
            cands.select_nth_unstable_by(k - 1, by_value);
            cands.truncate(k);
            cands.sort_unstable_by_key(|c| c.0);
            for c in cands.iter_mut() {
                c.1 = dist.weights[c.0 as usize];
            }
            mass_of(cands)
        } else {
            for c in cands.iter_mut() {
                c.1 = dist.weights[c.0 as usize];
            }
            dist.total
        };
        let inv = (1.0 / sum) as f32;
        for c in cands.iter_mut() {
            c.1 *= inv;
        }
        if self.min_p > 0.0 {
            // The most likely candidate has probability exp(0) * inv.
            let floor = self.min_p * inv;
            cands.retain(|c| c.1 >= floor);
        }
        if self.top_p < 1.0 && !top_p_cut(cands, self.top_p) && nucleus_bound {
            return false;
        }
        // Back to id order (the cut sorts by value).
        cands.sort_unstable_by_key(|c| c.0);
        true
    }
}

/// A draw over candidates and their weights, in their order, `total` being the weights' sum.
fn draw(cands: impl Iterator<Item = (u32, f32)>, total: f64, rng: &mut Rng) -> u32 {
    let mut target = rng.next_f64() * total;
    let mut last = 0;
    for (t, w) in cands {
        target -= f64::from(w);
        if target < 0.0 {
            return t;
        }
        if w > 0.0 {
            last = t;
        }
    }
    last
}

/// The smallest set of most likely candidates whose probabilities reach `top_p`, sorted by
/// value; `false` (and every candidate kept) when all of them do not reach it. Sorting the
/// whole set for every token would cost more than the step on a small model, so the head is
/// selected in growing sizes until it holds enough mass.
fn top_p_cut(cands: &mut Vec<(u32, f32)>, top_p: f32) -> bool {
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
                return true;
            }
        }
        if n == cands.len() {
            return false;
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
/// (which the compiler vectorizes), then the first index that holds it. The plain loop took
/// 0.3 to 0.6 ms over gemma's 262,144 logits, up to 5% of a decode step; this one 0.07 ms.
pub fn argmax(logits: &[f32]) -> u32 {
    let max = max_of(logits);
    if max == f32::NEG_INFINITY {
        return 0;
    }
    logits.iter().position(|&v| v == max).unwrap_or(0) as u32
}

/// The largest value (-inf for none; a NaN never counts), in sixteen lanes.
fn max_of(logits: &[f32]) -> f32 {
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
    max
}

/// The passes over the whole vocabulary, compiled for AVX2 as well where the CPU has it
/// (the crate's baseline is SSE2, four lanes).
mod wide {
    use super::{exp_nonpositive, not_nan};

    /// `out[t] = logits[t] / temperature`, a NaN as -inf.
    pub(super) fn temper(logits: &[f32], temperature: f32, out: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        if crate::simd::has_avx2() {
            // SAFETY: the CPU has AVX2 and FMA (checked at run time).
            return unsafe { temper_avx2(logits, temperature, out) };
        }
        temper_any(logits, temperature, out)
    }

    /// `out[t] = e^(tempered[t] - max)`.
    pub(super) fn weigh(tempered: &[f32], max: f32, out: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        if crate::simd::has_avx2() {
            // SAFETY: as above.
            return unsafe { weigh_avx2(tempered, max, out) };
        }
        weigh_any(tempered, max, out)
    }

    #[inline(always)]
    fn temper_any(logits: &[f32], temperature: f32, out: &mut [f32]) {
        for (o, &v) in out.iter_mut().zip(logits) {
            *o = not_nan(v / temperature);
        }
    }

    #[inline(always)]
    fn weigh_any(tempered: &[f32], max: f32, out: &mut [f32]) {
        for (o, &x) in out.iter_mut().zip(tempered) {
            *o = exp_nonpositive(x - max);
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn temper_avx2(logits: &[f32], temperature: f32, out: &mut [f32]) {
        temper_any(logits, temperature, out)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn weigh_avx2(tempered: &[f32], max: f32, out: &mut [f32]) {
        weigh_any(tempered, max, out)
    }
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
    // Not `clamp`: a NaN comes out as -80 here, a number, where `clamp` would pass it on.
    #[allow(clippy::manual_clamp)]
    let clamped = x.max(-80.0).min(0.0);
    let shifted = clamped * std::f32::consts::LOG2_E + ROUND;
    let n = shifted - ROUND;
    // n as an integer from the bits of `shifted` (its low mantissa bits hold n), which, unlike
    // `n as i32`, vectorizes.
    let n_bits = (shifted.to_bits() as i32).wrapping_sub(ROUND.to_bits() as i32);
    let r = (clamped - n * LN2_HI) - n * LN2_LO;
    // Taylor to r⁷: the next term is below 5e-9 of the result for |r| ≤ 0.347.
    let p = 1.0
        + r * (1.0
            + r * (1.0 / 2.0
                + r * (1.0 / 6.0
                    + r * (1.0 / 24.0
                        + r * (1.0 / 120.0 + r * (1.0 / 720.0 + r * (1.0 / 5040.0)))))));
    // Scale by 2^n in the exponent bits: n ≥ -116, so the result stays a normal number.
    let scaled = f32::from_bits((p.to_bits() as i32).wrapping_add(n_bits << 23) as u32);
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
    fn the_bounded_cuts_keep_what_the_cuts_over_every_token_keep() {
        // Rows of several shapes: a few tokens far ahead, a flat spread, a spread with a
        // plateau of ties, and rows with banned (-inf) and NaN logits.
        let mut rng = Rng::new(11);
        let mut rows: Vec<Vec<f32>> = Vec::new();
        for shape in 0..5 {
            let row: Vec<f32> = (0..3000)
                .map(|i| {
                    let u = rng.next_f64() as f32;
                    match shape {
                        0 => u * 6.0 + if i % 97 == 3 { 9.0 } else { 0.0 },
                        1 => u * 2.0,
                        2 => (u * 8.0).floor(),
                        3 if i % 5 == 0 => f32::NEG_INFINITY,
                        4 if i % 7 == 0 => f32::NAN,
                        _ => u * 12.0 - 6.0,
                    }
                })
                .collect();
            rows.push(row);
        }
        let mut checked = 0;
        for row in &rows {
            for temperature in [0.3f32, 1.0, 1.7] {
                for top_k in [0u32, 1, 7, 40, 2999, 5000] {
                    for top_p in [1.0f32, 0.3, 0.9, 0.95, 0.999] {
                        for min_p in [0.0f32, 0.01, 0.2] {
                            let p = Sampling {
                                temperature,
                                top_k,
                                top_p,
                                min_p,
                                ..Sampling::default()
                            };
                            let tempered: Vec<f32> =
                                row.iter().map(|&v| not_nan(v / temperature)).collect();
                            let max = tempered.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
                            let weights: Vec<f32> =
                                tempered.iter().map(|&x| exp_nonpositive(x - max)).collect();
                            let dist = Tempered {
                                values: &tempered,
                                weights: &weights,
                                max,
                                total: mass(&weights),
                            };
                            let cuts = Cuts::new(&p, &tempered);
                            if cuts.none() {
                                continue;
                            }
                            let (mut fast, mut plain, mut histogram) =
                                (Vec::new(), Vec::new(), Vec::new());
                            cuts.survivors(&dist, &mut histogram, &mut fast);
                            assert!(cuts.candidates(&dist, None, &mut plain));
                            let bits = |c: &[(u32, f32)]| -> Vec<(u32, u32)> {
                                c.iter().map(|&(t, v)| (t, v.to_bits())).collect()
                            };
                            assert_eq!(bits(&fast), bits(&plain), "{p:?}");
                            assert!(!fast.is_empty());
                            checked += 1;
                        }
                    }
                }
            }
        }
        // Every setting but those without a cut (top-k 0 or past the finite tokens, top-p 1,
        // min-p 0).
        assert!(checked > 1300, "{checked}");
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

//! Reading llama.cpp's reference fixtures and comparing the engine's logits with them.

use std::path::{Path, PathBuf};

use modelhost_engine::{Chunk, Engine, Logits};

/// One prompt's reference.
pub struct Prompt {
    pub tokens: Vec<u32>,
    pub greedy: Vec<u32>,
    /// Per position: log-sum-exp of llama.cpp's row, and its top logits (id, logit).
    pub top: Vec<(f32, Vec<(u32, f32)>)>,
}

pub struct Reference {
    pub vocab: usize,
    pub prompts: Vec<Prompt>,
    /// (prompt, position, full row).
    pub full: Vec<(usize, usize, Vec<f32>)>,
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn u32(&mut self) -> u32 {
        let (a, b) = self.0.split_at(4);
        self.0 = b;
        u32::from_le_bytes(a.try_into().unwrap())
    }
    fn f32(&mut self) -> f32 {
        f32::from_bits(self.u32())
    }
    fn u32s(&mut self) -> Vec<u32> {
        let n = self.u32();
        (0..n).map(|_| self.u32()).collect()
    }
}

/// Writes the synthetic model of `arch` in `ty` that `scripts/reference/engine-fixtures.sh`
/// wrote for its fixture (the same arguments, the same seed, so the same bytes).
pub fn synthetic_model(dir: &Path, arch: &str, ty: &str) -> PathBuf {
    let path = dir.join(format!("{arch}-{ty}.gguf"));
    crate::modelhost_ok(&[
        "synth",
        "--arch",
        arch,
        "--types",
        ty,
        "--vocab",
        "1024",
        "--blocks",
        "6",
        "--size",
        "1MiB",
        "--seed",
        "1",
        "-o",
        path.to_str().expect("a UTF-8 scratch path"),
    ]);
    path
}

/// A fixture in `tests/fixtures/`.
pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name)
}

pub fn read_reference(path: &Path) -> Reference {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(&bytes[..4], b"MHRF", "not a reference fixture");
    let mut r = Reader(&bytes[4..]);
    assert_eq!(r.u32(), 1, "fixture version");
    let vocab = r.u32() as usize;
    let n = r.u32();
    let prompts = (0..n)
        .map(|_| {
            let tokens = r.u32s();
            let greedy = r.u32s();
            let k = r.u32();
            let top = (0..tokens.len())
                .map(|_| {
                    let lse = r.f32();
                    (lse, (0..k).map(|_| (r.u32(), r.f32())).collect())
                })
                .collect();
            Prompt {
                tokens,
                greedy,
                top,
            }
        })
        .collect();
    let rows = r.u32();
    let full = (0..rows)
        .map(|_| {
            let (p, pos) = (r.u32() as usize, r.u32() as usize);
            let row = (0..vocab)
                .map(|_| {
                    let (a, b) = r.0.split_at(2);
                    r.0 = b;
                    modelhost_engine::f16::f16_to_f32(u16::from_le_bytes([a[0], a[1]]))
                })
                .collect();
            (p, pos, row)
        })
        .collect();
    Reference {
        vocab,
        prompts,
        full,
    }
}

fn argmax(row: &[f32]) -> usize {
    row.iter()
        .enumerate()
        .fold(
            (0, f32::NEG_INFINITY),
            |b, (i, &v)| if v > b.1 { (i, v) } else { b },
        )
        .0
}

/// How close the engine came to llama.cpp.
#[derive(Debug, Default)]
pub struct Agreement {
    pub positions: usize,
    pub top1: usize,
    pub kl_sum: f64,
    pub kl_max: f64,
    pub greedy_same: usize,
    pub greedy_total: usize,
    /// Largest |difference| over the full rows, and the largest logit magnitude there.
    pub full_max_diff: f32,
    pub full_max_abs: f32,
}

impl Agreement {
    pub fn top1_rate(&self) -> f64 {
        self.top1 as f64 / self.positions.max(1) as f64
    }
    pub fn kl_mean(&self) -> f64 {
        self.kl_sum / self.positions.max(1) as f64
    }
}

/// KL(llama.cpp ‖ engine) over llama.cpp's top logits, with the rest of each distribution as
/// one more outcome.
fn kl(lse: f32, top: &[(u32, f32)], row: &[f32]) -> f64 {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let ours_lse = f64::from(max)
        + row
            .iter()
            .map(|&v| f64::from(v - max).exp())
            .sum::<f64>()
            .ln();
    let (mut kl, mut p_top, mut q_top) = (0.0, 0.0, 0.0);
    for &(id, logit) in top {
        let lp = f64::from(logit) - f64::from(lse);
        let lq = f64::from(row[id as usize]) - ours_lse;
        kl += lp.exp() * (lp - lq);
        p_top += lp.exp();
        q_top += lq.exp();
    }
    let (p_rest, q_rest): (f64, f64) = ((1.0 - p_top).max(0.0), (1.0 - q_top).max(1e-12));
    if p_rest > 1e-12 {
        kl += p_rest * (p_rest / q_rest).ln();
    }
    kl.max(0.0)
}

/// Runs every prompt through `engine` (slot 0) teacher-forced, in chunks of `chunk`, and
/// greedily, and compares with the reference.
pub fn compare(engine: &mut Engine, reference: &Reference, chunk: usize) -> Agreement {
    assert_eq!(engine.vocab_size(), reference.vocab);
    let vocab = reference.vocab;
    let mut a = Agreement::default();
    for (pi, prompt) in reference.prompts.iter().enumerate() {
        engine.clear(0).unwrap();
        let mut pos = 0;
        for piece in prompt.tokens.chunks(chunk) {
            let r = engine.step(&[Chunk {
                slot: 0,
                tokens: piece,
                logits: Logits::All,
            }]);
            r[0].as_ref().expect("the chunk runs");
            for (j, _) in piece.iter().enumerate() {
                let row = &engine.logits()[j * vocab..(j + 1) * vocab];
                let (lse, top) = &prompt.top[pos + j];
                a.positions += 1;
                a.top1 += usize::from(argmax(row) == top[0].0 as usize);
                let k = kl(*lse, top, row);
                a.kl_sum += k;
                a.kl_max = a.kl_max.max(k);
                for (fp, fpos, full) in &reference.full {
                    if *fp == pi && *fpos == pos + j {
                        for (x, y) in row.iter().zip(full) {
                            a.full_max_diff = a.full_max_diff.max((x - y).abs());
                            a.full_max_abs = a.full_max_abs.max(y.abs());
                        }
                    }
                }
            }
            pos += piece.len();
        }
        // Greedy: from the prompt, as llama.cpp continued it.
        engine.clear(0).unwrap();
        for piece in prompt.tokens.chunks(chunk) {
            engine.step(&[Chunk {
                slot: 0,
                tokens: piece,
                logits: Logits::Last,
            }]);
        }
        let mut ours = Vec::new();
        for _ in 0..prompt.greedy.len() {
            let next = argmax(&engine.logits()[..vocab]) as u32;
            ours.push(next);
            engine.step(&[Chunk {
                slot: 0,
                tokens: &[next],
                logits: Logits::Last,
            }]);
        }
        a.greedy_total += 1;
        if ours == prompt.greedy {
            a.greedy_same += 1;
        } else {
            let first = ours
                .iter()
                .zip(&prompt.greedy)
                .take_while(|(x, y)| x == y)
                .count();
            eprintln!("prompt {pi}: greedy differs from token {first}");
        }
    }
    a
}

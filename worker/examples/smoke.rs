use modelhost_engine::{Chunk, EngineOptions, KvType, Logits};
fn main() {
    let path = std::env::args().nth(1).unwrap();
    let tokens: Vec<u32> = std::env::args()
        .nth(2)
        .unwrap()
        .split(',')
        .map(|t| t.parse().unwrap())
        .collect();
    let m = modelhost_worker::standalone::open_model(std::path::Path::new(&path)).unwrap();
    let mut e = m
        .engine(EngineOptions {
            context: 512,
            slots: 1,
            batch: 64,
            outputs: 64,
            threads: 2,
            kv_type: KvType::F16,
            swa_full: false,
        })
        .unwrap();
    e.step(&[Chunk {
        slot: 0,
        tokens: &tokens,
        logits: Logits::Last,
    }]);
    let v = e.vocab_size();
    let bytes: Vec<u8> = e.logits()[..v]
        .iter()
        .flat_map(|x| x.to_le_bytes())
        .collect();
    std::fs::write("/tmp/ours.f32", bytes).unwrap();
}

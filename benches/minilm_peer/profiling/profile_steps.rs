//! TEMPORARY (not committed): per-step times of lamina's JIT plan, using
//! instrumentation added to the local lamina copy.
use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use lamina::runtime::exec::{step_profile, CompileOptions};
use lamina::runtime::text::BatchTokenizer;
use lamina::runtime::{bind_params_owned, WeightFile};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let threads: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(1);
    let which = args.get(2).cloned().unwrap_or("twelve".into());
    let runs: u32 = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(20);
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/minilm");
    let cache = std::path::PathBuf::from(std::env::var("LAMINA_CACHE").unwrap());
    let model = lamina::model::load(&root.join("minilm.lam")).unwrap();
    let w = WeightFile::load(cache.join("model.safetensors")).unwrap();
    let params = bind_params_owned(&model.graph, Some(w), &Default::default()).unwrap().values;
    let (compiled, _) = lamina::compile::compile(&model.graph, &params, CompileOptions { threads, isa: None }).unwrap();
    let sentences: Vec<String> = std::fs::read_to_string(root.join("testdata/sentences.txt")).unwrap().lines().filter(|l| !l.trim().is_empty()).map(String::from).collect();
    let texts = match which.as_str() { "one" => vec![sentences[0].clone()], "onelong" => vec![sentences[10].clone()], _ => sentences[..12].to_vec() };
    let b = BatchTokenizer::from_file(&cache.join("tokenizer.json"), 128).unwrap().encode(&texts).unwrap();
    let inputs = HashMap::from([("input_ids".to_string(), b.input_ids), ("attention_mask".to_string(), b.attention_mask), ("token_type_ids".to_string(), b.token_type_ids)]);
    for _ in 0..3 { compiled.run(&inputs).unwrap(); }
    step_profile::reset();
    let t = std::time::Instant::now();
    for _ in 0..runs { compiled.run(&inputs).unwrap(); }
    let total = t.elapsed() / runs;
    let rows = step_profile::take();
    let steps_sum: Duration = rows.iter().map(|r| r.3).sum::<Duration>() / runs;
    println!("per run: wall {:.3} ms, sum of steps {:.3} ms, steps {}", total.as_secs_f64()*1e3, steps_sum.as_secs_f64()*1e3, rows.len());
    // Group by description.
    let mut groups: HashMap<String, (Duration, usize)> = HashMap::new();
    for r in &rows { let e = groups.entry(r.2.clone()).or_default(); e.0 += r.3 / runs; e.1 += 1; }
    let mut g: Vec<_> = groups.into_iter().collect();
    g.sort_by(|a, b| b.1 .0.cmp(&a.1 .0));
    for (d, (t, n)) in g { println!("{:9.3} ms {:5.1}%  x{:2}  {}", t.as_secs_f64()*1e3, 100.0*t.as_secs_f64()/steps_sum.as_secs_f64(), n, d); }
}

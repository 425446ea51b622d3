//! `lamina saliency`: a PNG heat map of |d score_K / d input| over one
//! example (a row of an .npy file or a photo), through
//! [`crate::engine::saliency`].

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use clap::Args;

use super::run::{class_names, default_threads, engine_failure, Backend};
use super::{fail, report, Reported};
use crate::diagnostics::Diagnostic;
use crate::engine::saliency::SaliencyModel;
use crate::engine::{Model, Options, Weights};
use crate::plot;
use crate::runtime::npy::read_npy;
use crate::tensor::Tensor;

#[derive(Args, Debug)]
pub struct SaliencyArgs {
    /// The .lam model file: a classifier whose output (or --scores) holds class scores along its
    /// last axis. The score differentiated is the logit: the operand of a final softmax or
    /// log_softmax, else the output itself.
    model: PathBuf,
    /// Examples (.npy, f32, first axis the batch) for the model's f32 input; --index picks one.
    #[arg(
        long,
        value_name = "FILE.npy",
        required_unless_present = "image",
        conflicts_with = "image"
    )]
    input: Option<PathBuf>,
    /// Which example (row) of --input to explain.
    #[arg(long, value_name = "N", default_value_t = 0, requires = "input")]
    index: usize,
    /// A photo (JPEG or PNG) for a model whose input is declared `= image(...)` (its
    /// preprocessing: crop, resize, normalise); the map is over the preprocessed picture.
    #[arg(long, value_name = "PHOTO")]
    image: Option<PathBuf>,
    /// The class whose score is differentiated [default: the predicted class].
    #[arg(long, value_name = "K")]
    class: Option<usize>,
    /// Safetensors weight file [default: the file the model names, else <model-stem>.safetensors beside it].
    #[arg(long, value_name = "FILE")]
    weights: Option<PathBuf>,
    /// Where the PNG goes: the input picture, the heat map of the gradient's absolute value
    /// (largest over channels; black = 0, white = the largest in the map), and the map over
    /// the picture [default: <input-stem>.saliency.png in the current folder].
    #[arg(short = 'o', long = "out", value_name = "FILE.png")]
    out: Option<PathBuf>,
    /// The output holding the class scores [default: the first output].
    #[arg(long, value_name = "OUTPUT")]
    scores: Option<String>,
    /// The f32 input to differentiate against, when the model has several.
    #[arg(long, value_name = "INPUT")]
    wrt: Option<String>,
    /// Height and width of a flat input's picture, as H,W (the example's values are
    /// channels x H x W, channels first) [default: a square, for flat inputs].
    #[arg(long, value_name = "H,W", value_parser = parse_picture)]
    picture: Option<(usize, usize)>,
    /// Class names, one a line, in score order, for the printed summary and the title
    /// [default: classes.txt beside the model, when there is one].
    #[arg(long, value_name = "FILE")]
    classes: Option<PathBuf>,
    /// Execution backend.
    #[arg(long, value_enum, default_value_t = Backend::Jit)]
    backend: Backend,
    /// Worker threads for the JIT backend's kernels.
    #[arg(long, value_name = "N", default_value_t = default_threads())]
    threads: usize,
}

fn parse_picture(s: &str) -> Result<(usize, usize), String> {
    let bad = || format!("expected HEIGHT,WIDTH (two positive integers), got `{s}`");
    let (h, w) = s.split_once(',').ok_or_else(bad)?;
    let h: usize = h.trim().parse().map_err(|_| bad())?;
    let w: usize = w.trim().parse().map_err(|_| bad())?;
    if h == 0 || w == 0 {
        return Err(bad());
    }
    Ok((h, w))
}

/// Row `index` of `x` (first axis), keeping the axis: `[1, ...]`.
fn example(x: &Tensor, index: usize, path: &Path) -> Result<Tensor, Diagnostic> {
    let at = |m: String| Diagnostic::error(format!("--input {}: {m}", path.display()));
    let Some(values) = x.as_f32() else {
        return Err(at(format!("the examples must be f32, not {}", x.dtype())));
    };
    let Some((&rows, rest)) = x.shape().split_first() else {
        return Err(at(
            "a scalar has no examples: the first axis is the batch".into()
        ));
    };
    if index >= rows {
        return Err(at(format!(
            "--index {index} is out of range: the file has {rows} examples (0 to {})",
            rows.saturating_sub(1)
        )));
    }
    let size: usize = rest.iter().product();
    let mut shape = vec![1];
    shape.extend_from_slice(rest);
    Ok(Tensor::f32(
        shape,
        values[index * size..(index + 1) * size].to_vec(),
    ))
}

pub(super) fn saliency(args: &SaliencyArgs) -> Result<(), Reported> {
    let mut problems = Vec::new();
    if args.threads == 0 {
        problems.push(Diagnostic::error(
            "--threads: at least one worker thread is needed, got 0",
        ));
    }
    let input = match &args.input {
        Some(path) => match read_npy(path) {
            Ok(x) => example(&x, args.index, path)
                .map_err(|d| problems.push(d))
                .ok(),
            Err(e) => {
                problems.push(Diagnostic::error(format!(
                    "--input {}: {e}",
                    path.display()
                )));
                None
            }
        },
        None => None,
    };
    if let Some(photo) = &args.image {
        if !photo.is_file() {
            problems.push(Diagnostic::error(format!(
                "--image {}: no such file",
                photo.display()
            )));
        }
    }
    let model = Model::load(&args.model);
    if !problems.is_empty() {
        if let Err(e) = &model {
            report(e.diagnostics(), e.file());
        }
        return Err(fail(problems, None));
    }
    let model = model.map_err(engine_failure)?;
    let names = class_names(args.classes.as_deref(), &model)?;
    let options = Options {
        backend: args.backend.into(),
        threads: args.threads,
        ..Options::default()
    };
    let weights = match &args.weights {
        Some(path) => Weights::File(path.clone()),
        None => Weights::Conventional,
    };
    let saliency = SaliencyModel::new(
        &model,
        weights,
        &options,
        args.wrt.as_deref(),
        args.scores.as_deref(),
    )
    .map_err(engine_failure)?;
    let inputs: HashMap<String, Tensor> = match (input, &args.image) {
        (Some(x), _) => HashMap::from([(saliency.input().to_string(), x)]),
        (None, Some(photo)) => saliency
            .session()
            .image_inputs(std::slice::from_ref(photo))
            .map_err(engine_failure)?,
        (None, None) => unreachable!("clap requires --input or --image"),
    };
    let result = saliency.run(inputs, args.class).map_err(engine_failure)?;
    let maps = result.maps(args.picture).map_err(|e| {
        fail(
            vec![Diagnostic::error(format!("cannot draw the map: {e}"))],
            None,
        )
    })?;
    let [map] = &maps[..] else {
        return Err(fail(
            vec![Diagnostic::error(format!(
                "one example gives {} maps: the input's first axis must be the batch",
                maps.len()
            ))],
            None,
        ));
    };
    let name = |k: usize| {
        names
            .as_ref()
            .and_then(|n| n.get(k))
            .map_or(String::new(), |n| format!(" ({n})"))
    };
    let source = args
        .input
        .as_ref()
        .or(args.image.as_ref())
        .expect("an input or an image");
    let out = args.out.clone().unwrap_or_else(|| {
        let stem = source
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "input".into());
        match &args.input {
            Some(_) => PathBuf::from(format!("{stem}.{}.saliency.png", args.index)),
            None => PathBuf::from(format!("{stem}.saliency.png")),
        }
    });
    let largest = map.map.iter().copied().fold(0.0f32, f32::max);
    let title = format!(
        "{}: |d score[{}]{} / d {}|, predicted {}{}; max {largest:.3e}",
        model.path().display(),
        map.class,
        name(map.class),
        result.input_name,
        map.predicted,
        name(map.predicted),
    );
    let image = plot::saliency_png(map, &title)
        .and_then(|image| plot::write_png(&out, &image).map(|()| image))
        .map_err(|e| fail(vec![Diagnostic::error(format!("-o {e}"))], None))?;
    let peak = map
        .map
        .iter()
        .enumerate()
        .fold(0, |best, (i, &v)| if v > map.map[best] { i } else { best });
    println!(
        "class {}{}: score {:.4} (predicted {}{})",
        map.class,
        name(map.class),
        map.score,
        map.predicted,
        name(map.predicted)
    );
    println!(
        "|d score / d {}| over {}x{} ({} channel{}): max {largest:.4e} at row {}, column {}",
        result.input_name,
        map.height,
        map.width,
        map.channels,
        if map.channels == 1 { "" } else { "s" },
        peak / map.width,
        peak % map.width
    );
    println!(
        "wrote {} ({}x{})",
        out.display(),
        image.width(),
        image.height()
    );
    Ok(())
}

//! `lamina train`: flags to a [`TrainConfig`], the data read from .npy, a
//! progress bar, a CSV log, checkpoints, and Ctrl-C as a clean stop.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};

use super::run::engine_failure;
use super::{fail, Reported};
use crate::diagnostics::Diagnostic;
use crate::engine::train::{
    split, Dataset, EpochReport, Observer, Optimizer, Schedule, StepReport, TrainConfig, Trainer,
};
use crate::engine::{train_log, Model};
use crate::plot;
use crate::runtime::npy::read_npy;

#[derive(Args, Debug)]
pub struct TrainArgs {
    /// The .lam model file. Its loss is the output `loss` (or --loss NAME); a model without one
    /// is trained as a classifier: cross_entropy of its first output's logits against --labels.
    model: PathBuf,
    /// The examples (.npy, f32, one row per example) for the model's data input.
    #[arg(long, value_name = "FILE")]
    data: PathBuf,
    /// Integer class ids (.npy, i64 or i32), one per example.
    #[arg(long, value_name = "FILE")]
    labels: PathBuf,
    /// Share of the examples held out (seeded shuffle) to validate on after each epoch.
    #[arg(long, value_name = "F", default_value_t = 0.1)]
    val_split: f64,
    #[arg(long, value_name = "N", default_value_t = 10)]
    epochs: usize,
    /// Examples per step (the last incomplete batch of an epoch is left out).
    #[arg(long, value_name = "B", default_value_t = 32)]
    batch: usize,
    #[arg(long, value_enum, default_value_t = OptimizerFlag::Adam)]
    optimizer: OptimizerFlag,
    /// Learning rate.
    #[arg(long, value_name = "LR", default_value_t = 1e-3)]
    lr: f32,
    /// SGD momentum (0: plain SGD).
    #[arg(long, value_name = "M", default_value_t = 0.0)]
    momentum: f32,
    /// Nesterov momentum (SGD, with --momentum).
    #[arg(long)]
    nesterov: bool,
    /// L2 weight decay (decoupled for adamw).
    #[arg(long, value_name = "WD", default_value_t = 0.0)]
    weight_decay: f32,
    /// Learning-rate schedule after warmup: constant, step (x --gamma every --step-every epochs)
    /// or cosine (down to 0 at the last step).
    #[arg(long, value_enum, default_value_t = ScheduleFlag::Constant)]
    schedule: ScheduleFlag,
    #[arg(long, value_name = "EPOCHS", default_value_t = 10)]
    step_every: usize,
    #[arg(long, value_name = "G", default_value_t = 0.1)]
    gamma: f32,
    /// Steps of linear warmup from 0 to --lr.
    #[arg(long, value_name = "STEPS", default_value_t = 0)]
    warmup: usize,
    /// Scale the gradients down when their global L2 norm exceeds this.
    #[arg(long, value_name = "NORM")]
    clip_norm: Option<f32>,
    /// Seeds the fresh values (--init), the validation split and the shuffles: a run repeats
    /// exactly from its seed.
    #[arg(long, value_name = "S", default_value_t = 0)]
    seed: u64,
    /// Start from fresh values: each parameter's declared initializer, else Glorot-uniform for
    /// matrices and zeros for vectors (instead of the weight file).
    #[arg(long, conflicts_with = "resume")]
    init: bool,
    /// Weights to start from [default: the model's weight file].
    #[arg(long, value_name = "FILE", conflicts_with_all = ["init", "resume"])]
    weights: Option<PathBuf>,
    /// Continue from a checkpoint written by an earlier run (parameters, optimiser state, epoch).
    #[arg(long, value_name = "CKPT")]
    resume: Option<PathBuf>,
    /// Where the trained weights go (safetensors, for `lamina run --weights`)
    /// [default: <model-stem>.trained.safetensors beside the model].
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// Checkpoint written after every epoch and on Ctrl-C [default: OUT with .ckpt.safetensors].
    #[arg(long, value_name = "FILE")]
    checkpoint: Option<PathBuf>,
    /// The per-epoch CSV log [default: OUT with .csv].
    #[arg(long, value_name = "FILE")]
    log: Option<PathBuf>,
    /// The PNG plot of the loss and accuracy curves (training and validation), redrawn after
    /// every epoch; a resumed run plots the epochs of its log before it too
    /// [default: OUT with .png].
    #[arg(long, value_name = "FILE")]
    plot: Option<PathBuf>,
    /// The scalar output to minimise [default: `loss`, else cross_entropy on the first output].
    #[arg(long, value_name = "OUTPUT")]
    loss: Option<String>,
    #[arg(long, value_name = "N", default_value_t = super::run::default_threads())]
    threads: usize,
    /// No progress bar (epoch lines only).
    #[arg(long)]
    quiet: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum OptimizerFlag {
    Sgd,
    Adam,
    Adamw,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum ScheduleFlag {
    Constant,
    Step,
    Cosine,
}

/// Set by the SIGINT handler; the training loop stops after the current step.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_interrupt(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

fn catch_interrupt() {
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(
            libc::SIGINT,
            on_interrupt as extern "C" fn(libc::c_int) as libc::sighandler_t,
        );
    }
}

/// `OUT` with its extension replaced by `suffix` (`w.safetensors` -> `w.csv`).
fn beside(out: &Path, suffix: &str) -> PathBuf {
    let stem = out
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "weights".into());
    out.with_file_name(format!("{stem}{suffix}"))
}

struct Progress {
    bar: Option<ProgressBar>,
    log: std::fs::File,
    log_path: PathBuf,
    /// Every epoch so far (a resumed run's earlier ones from its log), for the plot.
    epochs: Vec<EpochReport>,
    plot_path: PathBuf,
    /// The first failure to write the log or the plot, reported after the weights are saved.
    write_failed: Option<String>,
}

impl Progress {
    fn failed(&mut self, message: String) {
        self.write_failed.get_or_insert(message);
    }
}

impl Observer for Progress {
    fn step(&mut self, r: &StepReport) -> bool {
        if let Some(bar) = &self.bar {
            bar.set_position(((r.epoch - 1) * r.steps_per_epoch + r.step) as u64);
            bar.set_message(format!(
                "epoch {} step {}/{} loss {:.4}{} {:.0} samples/s",
                r.epoch,
                r.step,
                r.steps_per_epoch,
                r.loss,
                r.accuracy
                    .map_or(String::new(), |a| format!(" acc {:.2}%", 100.0 * a)),
                r.samples_per_sec
            ));
        }
        !INTERRUPTED.load(Ordering::SeqCst)
    }

    fn epoch(&mut self, r: &EpochReport) {
        let pct = |a: Option<f64>| a.map_or("-".to_string(), |a| format!("{:.2}%", 100.0 * a));
        let line = format!(
            "epoch {:>3}: train loss {:.4} acc {}  val loss {} acc {}  {:.0} samples/s",
            r.epoch,
            r.train_loss,
            pct(r.train_accuracy),
            r.val_loss.map_or("-".to_string(), |l| format!("{l:.4}")),
            pct(r.val_accuracy),
            r.samples_per_sec
        );
        match &self.bar {
            Some(bar) => bar.println(line),
            None => eprintln!("{line}"),
        }
        if let Err(e) = self.log.write_all(train_log::row(r).as_bytes()) {
            self.failed(format!("--log {}: {e}", self.log_path.display()));
        }
        self.epochs.push(r.clone());
        if let Err(e) = plot::training_curves(&self.epochs)
            .and_then(|image| plot::write_png(&self.plot_path, &image))
        {
            self.failed(format!("--plot {e}"));
        }
    }
}

/// The epochs a resumed run's log already holds (none when it is new or
/// unreadable: the plot then starts at the resumed epoch).
fn earlier_epochs(log_path: &Path, resumed: bool) -> Vec<EpochReport> {
    if !resumed {
        return Vec::new();
    }
    std::fs::read_to_string(log_path)
        .ok()
        .and_then(|text| train_log::parse(&text).ok())
        .unwrap_or_default()
}

fn read(path: &Path, what: &str) -> Result<crate::tensor::Tensor, Diagnostic> {
    read_npy(path).map_err(|e| Diagnostic::error(format!("--{what} {}: {e}", path.display())))
}

pub(super) fn train(args: &TrainArgs) -> Result<(), Reported> {
    let optimizer = match args.optimizer {
        OptimizerFlag::Sgd => Optimizer::Sgd {
            momentum: args.momentum,
            nesterov: args.nesterov,
        },
        OptimizerFlag::Adam => Optimizer::adam(),
        OptimizerFlag::Adamw => Optimizer::AdamW {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
        },
    };
    let mut problems = Vec::new();
    if args.optimizer != OptimizerFlag::Sgd && (args.momentum != 0.0 || args.nesterov) {
        problems.push(Diagnostic::error(
            "--momentum and --nesterov are SGD's: give --optimizer sgd",
        ));
    }
    let schedule = match args.schedule {
        ScheduleFlag::Constant => Schedule::Constant,
        ScheduleFlag::Step => Schedule::Step {
            every: args.step_every,
            gamma: args.gamma,
        },
        ScheduleFlag::Cosine => Schedule::Cosine,
    };
    let config = TrainConfig {
        epochs: args.epochs,
        batch: args.batch,
        val_split: args.val_split,
        optimizer,
        lr: args.lr,
        weight_decay: args.weight_decay,
        schedule,
        warmup: args.warmup,
        clip_norm: args.clip_norm,
        seed: args.seed,
        init: args.init,
        loss: args.loss.clone(),
        threads: args.threads,
    };
    let x = read(&args.data, "data");
    let labels = read(&args.labels, "labels");
    let model = Model::load(&args.model);
    let (x, labels) = match (x, labels) {
        (Ok(x), Ok(l)) if problems.is_empty() => (x, l),
        (x, l) => {
            problems.extend(x.err());
            problems.extend(l.err());
            if let Err(e) = &model {
                crate::cli::report(e.diagnostics(), e.file());
            }
            return Err(fail(problems, None));
        }
    };
    let model = model.map_err(engine_failure)?;
    let mut trainer = Trainer::new(
        &model,
        config.clone(),
        args.weights.as_deref(),
        args.resume.as_deref(),
    )
    .map_err(engine_failure)?;
    let data = Dataset { x, labels };
    trainer.check_data(&data).map_err(engine_failure)?;
    let (train_set, val_set) = split(&data, config.val_split, config.seed);
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| beside(&model.path().to_path_buf(), ".trained.safetensors"));
    let checkpoint = args
        .checkpoint
        .clone()
        .unwrap_or_else(|| beside(&out, ".ckpt.safetensors"));
    let log_path = args.log.clone().unwrap_or_else(|| beside(&out, ".csv"));
    let plot_path = args.plot.clone().unwrap_or_else(|| beside(&out, ".png"));
    let resumed = trainer.epochs_done() > 0;
    let epochs = earlier_epochs(&log_path, resumed);
    let log = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .append(resumed)
        .truncate(!resumed)
        .open(&log_path)
        .and_then(|mut f| {
            if !resumed {
                f.write_all(format!("{}\n", train_log::HEADER).as_bytes())?;
            }
            Ok(f)
        })
        .map_err(|e| {
            fail(
                vec![Diagnostic::error(format!(
                    "--log {}: {e}",
                    log_path.display()
                ))],
                None,
            )
        })?;
    let steps = (train_set.x.shape()[0] / config.batch.clamp(1, train_set.x.shape()[0].max(1)))
        * config.epochs;
    let bar = (!args.quiet).then(|| {
        let bar = ProgressBar::new(steps as u64);
        bar.set_style(
            ProgressStyle::with_template("{bar:30} {pos}/{len} {msg} [{elapsed_precise}]")
                .expect("a valid template"),
        );
        bar.set_position((trainer.epochs_done() * steps / config.epochs.max(1)) as u64);
        bar
    });
    eprintln!(
        "training {} on {} examples ({} validating), batch {}, {} epochs{}",
        model.path().display(),
        train_set.x.shape()[0],
        val_set.x.shape()[0],
        config.batch,
        config.epochs,
        if resumed {
            format!(", resuming after epoch {}", trainer.epochs_done())
        } else {
            String::new()
        }
    );
    catch_interrupt();
    let mut progress = Progress {
        bar,
        log,
        log_path,
        epochs,
        plot_path: plot_path.clone(),
        write_failed: None,
    };
    let val = (val_set.x.shape()[0] > 0).then_some(&val_set);
    let result = trainer.fit(&train_set, val, &mut progress);
    if let Some(bar) = &progress.bar {
        bar.finish_and_clear();
    }
    let (_, stopped) = result.map_err(engine_failure)?;
    trainer
        .save_checkpoint(&checkpoint)
        .map_err(engine_failure)?;
    trainer.save_weights(&out).map_err(engine_failure)?;
    if let Some(e) = progress.write_failed {
        return Err(fail(vec![Diagnostic::error(e)], None));
    }
    eprintln!(
        "{} after epoch {}: weights {}, checkpoint {}{}",
        if stopped {
            "interrupted; saved"
        } else {
            "saved"
        },
        trainer.epochs_done(),
        out.display(),
        checkpoint.display(),
        if progress.epochs.is_empty() {
            String::new()
        } else {
            format!(", plot {}", plot_path.display())
        }
    );
    Ok(())
}

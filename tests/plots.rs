//! The PNG plots: the training curves `lamina train` writes decode to the
//! documented size and show the data (where the series' pixels sit follows
//! the values), with the font compiled in (no system font needed).

#[path = "common/mod.rs"]
mod common;

use common::lamina;
use image::RgbImage;
use lamina::engine::train::EpochReport;
use lamina::engine::train_log;
use lamina::plot::curves::{training_curves, HEIGHT, TRAIN_COLOR, VAL_COLOR, WIDTH};
use lamina::plot::write_png;
use plotters::style::RGBColor;

fn epochs(n: usize, with_val: bool) -> Vec<EpochReport> {
    (1..=n)
        .map(|e| {
            let t = e as f64 / n as f64;
            EpochReport {
                epoch: e,
                train_loss: 2.0 * (1.0 - t) + 0.05,
                train_accuracy: Some(0.3 + 0.65 * t),
                val_loss: with_val.then_some(2.1 * (1.0 - t) + 0.15),
                val_accuracy: with_val.then_some(0.25 + 0.6 * t),
                samples_per_sec: 1000.0,
                seconds: 0.1,
            }
        })
        .collect()
}

/// The median row of the pixels of exactly `color` in columns `xs`.
fn median_row(image: &RgbImage, color: RGBColor, xs: std::ops::Range<u32>) -> Option<u32> {
    let mut rows: Vec<u32> = Vec::new();
    for x in xs {
        for y in 0..image.height() {
            if image.get_pixel(x, y).0 == [color.0, color.1, color.2] {
                rows.push(y);
            }
        }
    }
    rows.sort_unstable();
    rows.get(rows.len() / 2).copied()
}

fn count(image: &RgbImage, color: RGBColor) -> usize {
    image
        .pixels()
        .filter(|p| p.0 == [color.0, color.1, color.2])
        .count()
}

fn written_and_decoded(image: &RgbImage) -> RgbImage {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("curves.png");
    write_png(&path, image).unwrap();
    let decoded = image::open(&path).unwrap().to_rgb8();
    assert_eq!(decoded.dimensions(), (WIDTH, HEIGHT));
    assert_eq!(decoded.as_raw(), image.as_raw(), "PNG is lossless");
    decoded
}

#[test]
fn curves_follow_the_data() {
    let image = written_and_decoded(&training_curves(&epochs(20, true)).unwrap());
    let half = WIDTH / 2;
    let third = half / 3;
    for color in [TRAIN_COLOR, VAL_COLOR] {
        // Loss falls: its pixels sit lower (larger rows) late than early.
        let early = median_row(&image, color, 0..third).unwrap();
        let late = median_row(&image, color, 2 * third..half).unwrap();
        assert!(
            early + 100 < late,
            "loss: early row {early}, late row {late}"
        );
        // Accuracy rises: its pixels sit higher late than early.
        let early = median_row(&image, color, half..half + third).unwrap();
        let late = median_row(&image, color, half + 2 * third..WIDTH).unwrap();
        assert!(
            late + 100 < early,
            "accuracy: early row {early}, late row {late}"
        );
    }
}

#[test]
fn rising_loss_draws_rising_pixels() {
    // The same check the other way round, so it cannot pass by layout alone.
    let mut rows = epochs(10, false);
    for r in &mut rows {
        r.train_loss = 0.1 * r.epoch as f64;
    }
    let image = training_curves(&rows).unwrap();
    let third = WIDTH / 6;
    let early = median_row(&image, TRAIN_COLOR, 0..third).unwrap();
    let late = median_row(&image, TRAIN_COLOR, 2 * third..WIDTH / 2).unwrap();
    assert!(late + 100 < early, "early row {early}, late row {late}");
}

#[test]
fn validation_series_only_when_validated() {
    let without = training_curves(&epochs(5, false)).unwrap();
    assert!(count(&without, TRAIN_COLOR) > 200);
    assert_eq!(count(&without, VAL_COLOR), 0);
    let with = training_curves(&epochs(5, true)).unwrap();
    assert!(count(&with, VAL_COLOR) > 200);
}

#[test]
fn one_epoch_and_no_accuracy_still_plot() {
    let mut one = epochs(1, true);
    one[0].train_accuracy = None;
    one[0].val_accuracy = None;
    let image = training_curves(&one).unwrap();
    assert_eq!(image.dimensions(), (WIDTH, HEIGHT));
    // Markers of the one epoch, in the loss panel only.
    assert!(count(&image, TRAIN_COLOR) > 10);
    let right: usize = (WIDTH / 2..WIDTH)
        .flat_map(|x| (0..HEIGHT).map(move |y| (x, y)))
        .filter(|&(x, y)| image.get_pixel(x, y).0 == [TRAIN_COLOR.0, TRAIN_COLOR.1, TRAIN_COLOR.2])
        .count();
    assert_eq!(right, 0);
    assert!(training_curves(&[]).is_err());
}

#[test]
fn train_writes_the_plot_of_its_log() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("w.safetensors");
    let plot = dir.path().join("curves.png");
    let (code, _, stderr) = lamina(&[
        "train",
        "models/digits/digits.lam",
        "--init",
        "--data",
        "models/digits/train_x.npy",
        "--labels",
        "models/digits/train_labels.npy",
        "--epochs",
        "4",
        "--quiet",
        "--out",
        out.to_str().unwrap(),
        "--plot",
        plot.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("plot "), "{stderr}");
    let written = image::open(&plot).unwrap().to_rgb8();
    assert_eq!(written.dimensions(), (WIDTH, HEIGHT));
    // The PNG is the plot of the CSV log beside the weights.
    let log = std::fs::read_to_string(dir.path().join("w.csv")).unwrap();
    let rows = train_log::parse(&log).unwrap();
    assert_eq!(rows.len(), 4);
    assert_eq!(written.as_raw(), training_curves(&rows).unwrap().as_raw());

    // Resumed for two more epochs: the plot has all six.
    let (code, _, stderr) = lamina(&[
        "train",
        "models/digits/digits.lam",
        "--data",
        "models/digits/train_x.npy",
        "--labels",
        "models/digits/train_labels.npy",
        "--epochs",
        "6",
        "--quiet",
        "--resume",
        dir.path().join("w.ckpt.safetensors").to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--plot",
        plot.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{stderr}");
    let log = std::fs::read_to_string(dir.path().join("w.csv")).unwrap();
    let rows = train_log::parse(&log).unwrap();
    assert_eq!(
        rows.iter().map(|r| r.epoch).collect::<Vec<_>>(),
        [1, 2, 3, 4, 5, 6]
    );
    let written = image::open(&plot).unwrap().to_rgb8();
    assert_eq!(written.as_raw(), training_curves(&rows).unwrap().as_raw());
}

#[test]
fn unwritable_plot_is_reported_after_saving_the_weights() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("w.safetensors");
    let plot = dir.path().join("missing-dir").join("curves.png");
    let (code, _, stderr) = lamina(&[
        "train",
        "models/digits/digits.lam",
        "--init",
        "--data",
        "models/digits/train_x.npy",
        "--labels",
        "models/digits/train_labels.npy",
        "--epochs",
        "1",
        "--quiet",
        "--out",
        out.to_str().unwrap(),
        "--plot",
        plot.to_str().unwrap(),
    ]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("--plot") && stderr.contains("missing-dir"),
        "{stderr}"
    );
    assert!(out.exists(), "the weights are saved anyway");
}

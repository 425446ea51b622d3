//! Banded steps (runtime/exec/banded.rs): a convolution whose only reader
//! is a depthwise convolution runs with it a band of rows at a time. On
//! generated blocks (1x1 and 3x3 producers, 3x3 and 5x5 depthwise windows
//! at strides 1 and 2, dilation, every padding mode, odd sizes, in-register
//! and row-pass activations, a residual, batches of 1 to 3), on every tier
//! and on 1 and 2 threads, every band height gives the bits of the
//! node-by-node plan and the interpreter's values; pairs that must not
//! band (a second reader, an output) do not. The blocks' convolutions read
//! a computed value (not the model input), whose memory the arena could
//! give to a later value were the banded step not keeping it alive.

mod jit_support;

use std::collections::HashMap;

use jit_support::{
    compare_outputs, compile_source, interpret_source, random_f32, rng, same_bits, tiers,
};
use lamina::codegen::conv::{WindowGeometry, WindowOp};
use lamina::codegen::window_nhwc::{window2d_nhwc_band, NhwcWindowArgs};
use lamina::codegen::Isa;
use lamina::ir::Bindings;
use lamina::runtime::exec::{Banding, CompileOptions, CompiledModel, SampleSplit};
use lamina::tensor::Tensor;

const BANDED: &str = "banded_conv_depthwise";

struct Block {
    name: &'static str,
    /// `[channels, height, width]` of the input.
    input: [usize; 3],
    expand: usize,
    /// The producer's kernel and padding.
    producer: (usize, &'static str),
    /// The depthwise window: kernel, stride, dilation, padding.
    window: (usize, usize, usize, &'static str),
    activation: &'static str,
    /// Add a second 1x1 convolution of the input to the depthwise output
    /// (stride 1, "same": a residual the depthwise step adds).
    residual: bool,
}

impl Block {
    fn text(&self) -> String {
        let [c, h, w] = self.input;
        let e = self.expand;
        let (kp, pp) = self.producer;
        let (k, s, d, pad) = self.window;
        let depthwise = format!(
            "conv2d(e, dw, bd, stride={s}, dilation={d}, padding={pad}, groups={e}, layout=\"nhwc\")"
        );
        let (depthwise, residual_param) = if self.residual {
            (
                format!("{depthwise} + conv2d(t, wr, layout=\"nhwc\")"),
                format!("param wr: f32[{e}, {c}, 1, 1] = normal(std=0.3, seed=5)"),
            )
        } else {
            (depthwise, String::new())
        };
        format!(
            r#"
model {name} {{
  input x: f32[batch, {h}, {w}, {c}]
  param we: f32[{e}, {c}, {kp}, {kp}] = normal(std=0.3, seed=1)
  param be: f32[{e}] = normal(std=0.1, seed=2)
  param dw: f32[{e}, 1, {k}, {k}] = normal(std=0.3, seed=3)
  param bd: f32[{e}] = normal(std=0.1, seed=4)
  {residual_param}
  t = tanh(x)
  e = relu6(conv2d(t, we, be, padding={pp}, layout="nhwc"))
  output y = {act}({depthwise})
}}
"#,
            name = self.name,
            act = self.activation,
        )
    }
}

const BLOCKS: &[Block] = &[
    Block {
        name: "expand_3x3_s1",
        input: [5, 13, 11],
        expand: 24,
        producer: (1, "0"),
        window: (3, 1, 1, "\"same\""),
        activation: "relu6",
        residual: false,
    },
    Block {
        name: "expand_3x3_s2",
        input: [4, 15, 9],
        expand: 20,
        producer: (1, "0"),
        window: (3, 2, 1, "\"same\""),
        activation: "relu6",
        residual: false,
    },
    Block {
        name: "expand_5x5_s2_valid",
        input: [3, 17, 12],
        expand: 35,
        producer: (1, "0"),
        window: (5, 2, 1, "\"valid\""),
        activation: "relu",
        residual: false,
    },
    Block {
        name: "expand_5x5_s1_residual",
        input: [6, 9, 10],
        expand: 16,
        producer: (1, "0"),
        window: (5, 1, 1, "\"same\""),
        activation: "relu6",
        residual: true,
    },
    Block {
        name: "dilated_hard_swish",
        input: [4, 14, 7],
        expand: 18,
        producer: (1, "0"),
        window: (3, 1, 2, "[1, 3, 2, 0]"),
        activation: "hard_swish",
        residual: false,
    },
    Block {
        name: "gathered_producer",
        input: [3, 12, 13],
        expand: 17,
        producer: (3, "1"),
        window: (3, 2, 1, "\"same\""),
        activation: "relu6",
        residual: false,
    },
];

fn compile(text: &str, threads: usize, isa: Isa, banding: Banding) -> CompiledModel {
    let mut model = compile_source(
        text,
        CompileOptions {
            threads,
            isa: Some(isa),
        },
    );
    // Whole batches, so the banded step sees several images.
    model.set_sample_split(SampleSplit::Never);
    model.set_banding(banding);
    model
}

fn step_kernels(model: &CompiledModel, x: &Tensor) -> Vec<&'static str> {
    model
        .prepare(&[x], &Bindings::new())
        .unwrap_or_else(|e| panic!("{e}"))
        .step_kernels
}

#[test]
fn every_band_height_gives_the_node_by_node_bits_and_the_interpreters_values() {
    let mut r = rng(0xba4d_0001);
    for block in BLOCKS {
        let text = block.text();
        for batch in [1, 3] {
            let [c, h, w] = block.input;
            let x = random_f32(&mut r, vec![batch, h, w, c], -1.0, 1.0);
            let inputs = HashMap::from([("x".to_string(), x.clone())]);
            let reference = interpret_source(&text, &inputs);
            for isa in tiers() {
                for threads in [1, 2] {
                    let what = format!("{}: batch {batch}, {isa}, {threads} thread(s)", block.name);
                    let whole = compile(&text, threads, isa, Banding::Never);
                    assert!(!step_kernels(&whole, &x).contains(&BANDED), "{what}");
                    let expected = whole.run(&inputs).unwrap();
                    compare_outputs(&what, &expected, &reference, 1e-5)
                        .unwrap_or_else(|e| panic!("{e}"));
                    for rows in [1, 2, 3, 100] {
                        let banded = compile(&text, threads, isa, Banding::Rows(rows));
                        let kernels = step_kernels(&banded, &x);
                        assert!(
                            kernels.contains(&BANDED),
                            "{what}, {rows} rows a band: steps {kernels:?}"
                        );
                        let got = banded.run(&inputs).unwrap();
                        same_bits(&format!("{what}, {rows} rows a band"), &expected, &got)
                            .unwrap_or_else(|e| panic!("{e}"));
                        // Again: the band buffers hold nothing a run needs from the last.
                        let again = banded.run(&inputs).unwrap();
                        same_bits(&format!("{what}, second run"), &expected, &again)
                            .unwrap_or_else(|e| panic!("{e}"));
                    }
                }
            }
        }
    }
}

#[test]
fn a_convolution_with_another_reader_or_that_is_an_output_is_not_banded() {
    let second_reader = r#"
model two_readers {
  input x: f32[batch, 12, 12, 4]
  param we: f32[16, 4, 1, 1] = normal(std=0.3, seed=1)
  param dw: f32[16, 1, 3, 3] = normal(std=0.3, seed=3)
  e = relu6(conv2d(x, we, layout="nhwc"))
  d = relu6(conv2d(e, dw, padding="same", groups=16, layout="nhwc"))
  output y = d + e
}
"#;
    let as_output = r#"
model expansion_out {
  input x: f32[batch, 12, 12, 4]
  param we: f32[16, 4, 1, 1] = normal(std=0.3, seed=1)
  param dw: f32[16, 1, 3, 3] = normal(std=0.3, seed=3)
  output e = relu6(conv2d(x, we, layout="nhwc"))
  output d = relu6(conv2d(e, dw, padding="same", groups=16, layout="nhwc"))
}
"#;
    let x = random_f32(&mut rng(0xba4d_0002), vec![2, 12, 12, 4], -1.0, 1.0);
    for (name, text) in [("second reader", second_reader), ("output", as_output)] {
        let model = compile(text, 2, Isa::Baseline, Banding::Rows(2));
        let kernels = step_kernels(&model, &x);
        assert!(!kernels.contains(&BANDED), "{name}: {kernels:?}");
        assert!(kernels.contains(&"window2d_nhwc"), "{name}: {kernels:?}");
    }
}

/// A depthwise window of `c` channels over one `h x w` image, stride 1,
/// its output as large as its input.
fn depthwise_window(
    c: usize,
    [h, w]: [usize; 2],
    kernel: [usize; 2],
    dilation: [usize; 2],
    pad: [usize; 2],
) -> WindowGeometry {
    WindowGeometry {
        batch: 1,
        in_channels: c,
        in_h: h,
        in_w: w,
        out_channels: c,
        out_h: h,
        out_w: w,
        kernel,
        stride: [1, 1],
        dilation,
        pad,
        groups: c,
    }
}

/// Output rows `rows` of `g`'s depthwise convolution with `taps`, from a
/// band holding the input rows from `first` on.
fn run_band(
    g: &WindowGeometry,
    taps: &[f32],
    band: &[f32],
    first: usize,
    rows: std::ops::Range<usize>,
    out: &mut [f32],
) -> Result<(), lamina::codegen::CodegenError> {
    let args = NhwcWindowArgs {
        x: band,
        taps: Some(taps),
        bias: None,
        post: None,
        residual: None,
        out,
    };
    window2d_nhwc_band(Isa::Baseline, WindowOp::Depthwise, g, args, first, rows)
}

#[test]
fn a_band_missing_rows_the_window_reads_is_refused() {
    // 3x3, stride 1, one row of padding: output rows 2..4 read input rows 1..5.
    let (c, w) = (16, 6);
    let g = depthwise_window(c, [8, w], [3, 3], [1, 1], [1, 1]);
    let taps = vec![0.5f32; 9 * c];
    let mut out = vec![0.0f32; 2 * w * c];
    let run =
        |band: &[f32], first: usize, out: &mut [f32]| run_band(&g, &taps, band, first, 2..4, out);
    let three_rows = vec![1.0f32; 3 * w * c];
    let err = run(&three_rows, 1, &mut out).unwrap_err().to_string();
    assert!(err.contains("read input rows 1..5"), "{err}");
    let four_rows = vec![1.0f32; 4 * w * c];
    let err = run(&four_rows, 2, &mut out).unwrap_err().to_string();
    assert!(err.contains("read input rows 1..5"), "{err}");
    let err = run(&four_rows[1..], 1, &mut out).unwrap_err().to_string();
    assert!(err.contains("not whole rows"), "{err}");
    run(&four_rows, 1, &mut out).unwrap();
    // Interior pixels: nine taps of 0.5 over ones.
    assert_eq!(out[w * c + c], 4.5);
}

#[test]
fn a_dilated_window_needs_the_rows_below_its_first_rows_reads() {
    // 3 taps 2 apart, one row of padding: output row 0 reads input rows 1
    // and 3, row 1 reads rows 0, 2 and 4, so rows 0..2 need rows 0..5.
    let (c, w) = (16, 5);
    let g = depthwise_window(c, [9, w], [3, 1], [2, 1], [1, 0]);
    let taps = vec![1.0f32; 3 * c];
    let mut out = vec![0.0f32; 2 * w * c];
    let four_rows_from_1 = vec![1.0f32; 4 * w * c];
    let err = run_band(&g, &taps, &four_rows_from_1, 1, 0..2, &mut out)
        .unwrap_err()
        .to_string();
    assert!(err.contains("read input rows 0..5"), "{err}");
}

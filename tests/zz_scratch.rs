use lamina::codegen::*;
use lamina::ir::*;
#[test]
fn dump() {
    let opts = CodegenOptions {
        keep_disassembly: true,
        ..Default::default()
    };
    let mut b = KernelLibraryBuilder::with_options(&opts).unwrap();
    let ops = [
        UnaryOp::Exp,
        UnaryOp::Tanh,
        UnaryOp::Sigmoid,
        UnaryOp::Gelu,
        UnaryOp::GeluTanh,
        UnaryOp::Erf,
        UnaryOp::Log,
    ];
    let ids: Vec<_> = ops
        .iter()
        .map(|&op| {
            let t = std::time::Instant::now();
            let id = b
                .add_elementwise(
                    &ElementwiseExpr {
                        steps: vec![ExprStep::Input(0), ExprStep::Unary(op, 0)],
                    },
                    &[InnerStride::Contiguous],
                )
                .unwrap();
            println!("{} compile {:?}", op.name(), t.elapsed());
            id
        })
        .collect();
    let lib = b.finish().unwrap();
    if let Ok(k) = std::env::var("K") {
        for info in lib.kernels() {
            if info.name == k {
                println!("{}", info.disassembly.as_ref().unwrap());
            }
        }
    }
    let n = 1 << 16;
    let x: Vec<f32> = (0..n)
        .map(|i| (i as f32 / n as f32) * 8.0 - 4.0 + 1.0)
        .collect();
    let mut y = vec![0.0f32; n];
    for (op, id) in ops.iter().zip(&ids) {
        let mut best = f64::MAX;
        for _ in 0..200 {
            let t = std::time::Instant::now();
            lib.elementwise(
                *id,
                ElementwiseArgs {
                    out: &mut y,
                    out_shape: &[n],
                    inputs: &[TensorView {
                        data: &x,
                        shape: &[n],
                    }],
                },
                &Threads::single(),
            )
            .unwrap();
            best = best.min(t.elapsed().as_secs_f64());
        }
        println!("{} 64K: {:.3} Gelem/s", op.name(), n as f64 / best / 1e9);
    }
}

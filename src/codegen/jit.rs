//! The Cranelift JIT module shared by every kernel family: ISA setup, one
//! `define` entry point that records each kernel's CLIF text, and the
//! finalized code that owns (and frees) the executable memory.

use cranelift_codegen::ir::{types, AbiParam, UserFuncName, Value};
use cranelift_codegen::settings::{self, Configurable};
use cranelift_codegen::Context;
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext};
use cranelift_jit::{JITBuilder, JITModule};
use cranelift_module::{default_libcall_names, DataDescription, DataId, FuncId, Linkage, Module};

use super::constants::ConstantTable;
use super::simd::{ConstantPool, Emitter};
use super::target::{Isa, Target};
use super::wide_math::Assembled;
use super::CodegenError;

/// How kernels are compiled. The defaults use every feature the CPU has.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CodegenOptions {
    /// Use AVX (VEX encodings, needed for FMA) when the CPU has it.
    pub use_avx: bool,
    /// Use fused multiply-add instructions when the CPU has them. Without
    /// them multiply-adds are emitted as a multiply and an add (never as
    /// Cranelift's `fma`, which would become a libm call per lane).
    pub use_fma: bool,
    /// Run the Cranelift verifier on every function (slow; on in debug builds).
    pub verify: bool,
    /// Keep each kernel's disassembly (for `--dump-asm` style debugging).
    pub keep_disassembly: bool,
    /// The kernel tier: `None` takes `LAMINA_ISA` when set, else the best
    /// tier the CPU runs. A tier above the CPU's is an error. The wide
    /// tiers need `use_avx` and `use_fma`.
    pub isa: Option<Isa>,
}

impl Default for CodegenOptions {
    fn default() -> Self {
        CodegenOptions {
            use_avx: true,
            use_fma: true,
            verify: cfg!(debug_assertions),
            keep_disassembly: false,
            isa: None,
        }
    }
}

/// The instruction-set features the kernels were compiled for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IsaFeatures {
    pub avx: bool,
    /// Multiply-adds are single fused instructions.
    pub fma: bool,
}

#[cfg(target_arch = "x86_64")]
fn host_features() -> IsaFeatures {
    let avx = std::is_x86_feature_detected!("avx");
    IsaFeatures {
        avx,
        fma: avx && std::is_x86_feature_detected!("fma"),
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn host_features() -> IsaFeatures {
    // aarch64 and riscv64 (the other Cranelift hosts) have fused
    // multiply-add in the base vector ISA.
    IsaFeatures {
        avx: false,
        fma: true,
    }
}

/// The tier `options` ask for, checked against the CPU (and `LAMINA_ISA`
/// when the options leave it open). The wide tiers' code uses VEX/EVEX
/// encodings and FMA, so options that switch those off mean the baseline.
fn kernel_tier(options: &CodegenOptions, features: IsaFeatures) -> Result<Isa, CodegenError> {
    let target = match options.isa {
        Some(isa) => Target::detected().with_isa(isa)?,
        None => Target::from_env()?,
    };
    if features.avx && features.fma {
        return Ok(target.isa);
    }
    match options.isa {
        Some(isa) if isa != Isa::Baseline => Err(CodegenError::Unsupported(format!(
            "the {isa} tier with AVX or FMA switched off"
        ))),
        _ => Ok(Isa::Baseline),
    }
}

/// One compiled kernel's record: its name, and its CLIF as emitted (before
/// Cranelift's optimisations, so the text depends only on our generator).
#[derive(Clone, Debug)]
pub struct KernelInfo {
    pub name: String,
    /// The CLIF; for an assembled kernel, a one-line header (its listing
    /// is in `disassembly` when kept, and in `KernelLibrary::clif_text`).
    pub clif: String,
    pub disassembly: Option<String>,
    /// Machine code of an assembled kernel (formatted on demand).
    pub(crate) code: Option<std::sync::Arc<[u8]>>,
}

impl KernelInfo {
    /// Whether the kernel was assembled (machine code of the wide tiers),
    /// not compiled by Cranelift.
    pub fn is_assembled(&self) -> bool {
        self.code.is_some()
    }

    /// The CLIF, or for an assembled kernel its header and Intel-syntax listing.
    pub fn text(&self) -> String {
        match &self.code {
            Some(code) => format!("{}{}", self.clif, x86_listing(code)),
            None => self.clif.clone(),
        }
    }
}

/// An Intel-syntax listing of assembled code (offsets from 0), for the
/// kernel dump: kernel generation can be reviewed and snapshot-tested.
pub(crate) fn x86_listing(code: &[u8]) -> String {
    use iced_x86::{Decoder, DecoderOptions, Formatter, IntelFormatter};
    let mut decoder = Decoder::with_ip(64, code, 0, DecoderOptions::NONE);
    let mut formatter = IntelFormatter::new();
    let mut text = String::new();
    let mut line = String::new();
    for instruction in &mut decoder {
        line.clear();
        formatter.format(&instruction, &mut line);
        text.push_str(&format!("{:04x}  {line}\n", instruction.ip()));
    }
    text
}

/// Index of a kernel inside one `JitBuilder`, resolved to a code pointer
/// after finalization.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct KernelSlot(pub(crate) usize);

pub(crate) struct JitBuilder {
    module: JITModule,
    constants: ConstantTable,
    constants_id: DataId,
    ctx: Context,
    fn_ctx: FunctionBuilderContext,
    features: IsaFeatures,
    isa: Isa,
    keep_disassembly: bool,
    ids: Vec<FuncId>,
    infos: Vec<KernelInfo>,
}

fn cranelift_err(e: impl std::fmt::Display) -> CodegenError {
    CodegenError::Cranelift(e.to_string())
}

impl JitBuilder {
    pub(crate) fn new(options: &CodegenOptions) -> Result<JitBuilder, CodegenError> {
        let mut flags = settings::builder();
        let set = |flags: &mut settings::Builder, name: &str, value: &str| {
            flags.set(name, value).map_err(cranelift_err)
        };
        set(&mut flags, "opt_level", "speed")?;
        set(
            &mut flags,
            "enable_verifier",
            if options.verify { "true" } else { "false" },
        )?;
        // The JIT places code anywhere in the address space: no PIC, and
        // libcalls through absolute addresses.
        set(&mut flags, "is_pic", "false")?;
        set(&mut flags, "use_colocated_libcalls", "false")?;

        let mut isa_builder = cranelift_native::builder()
            .map_err(|e| CodegenError::UnsupportedHost(e.to_string()))?;
        let host = host_features();
        let features = IsaFeatures {
            avx: host.avx && options.use_avx,
            fma: host.fma && options.use_fma && (options.use_avx || !cfg!(target_arch = "x86_64")),
        };
        if cfg!(target_arch = "x86_64") {
            // cranelift_native enabled what the CPU has; switch off what the
            // options exclude. FMA needs the VEX encodings of AVX.
            if !features.avx {
                for flag in [
                    "has_avx",
                    "has_avx2",
                    "has_fma",
                    "has_avx512f",
                    "has_avx512vl",
                    "has_avx512dq",
                ] {
                    isa_builder.set(flag, "false").map_err(cranelift_err)?;
                }
            }
            if !features.fma {
                isa_builder.set("has_fma", "false").map_err(cranelift_err)?;
            }
        }
        let isa = isa_builder
            .finish(settings::Flags::new(flags))
            .map_err(cranelift_err)?;
        let tier = kernel_tier(options, features)?;
        let mut module = JITModule::new(JITBuilder::with_isa(isa, default_libcall_names()));
        let constants_id = module
            .declare_data("lamina_vector_constants", Linkage::Local, false, false)
            .map_err(cranelift_err)?;
        let ctx = module.make_context();
        Ok(JitBuilder {
            module,
            constants: ConstantTable::default(),
            constants_id,
            ctx,
            fn_ctx: FunctionBuilderContext::new(),
            features,
            isa: tier,
            keep_disassembly: options.keep_disassembly,
            ids: Vec::new(),
            infos: Vec::new(),
        })
    }

    pub(crate) fn features(&self) -> IsaFeatures {
        self.features
    }

    /// The kernel tier this module's kernels are generated for.
    pub(crate) fn isa(&self) -> Isa {
        self.isa
    }

    /// Adds finished machine code (the wide tiers' micro-kernels) as a
    /// function taking `params` pointer-sized integers and returning
    /// nothing. Nothing checks the bytes against that signature: the
    /// assembler that made them is responsible for it, and for needing no
    /// relocations. Its disassembly stands in for the CLIF in the kernel
    /// dump, formatted only when asked for (formatting every kernel would
    /// cost more than assembling them).
    pub(crate) fn define_bytes(
        &mut self,
        name: &str,
        params: usize,
        code: &Assembled,
    ) -> Result<KernelSlot, CodegenError> {
        let pointer = self.module.target_config().pointer_type();
        let mut signature = self.module.make_signature();
        for _ in 0..params {
            signature.params.push(AbiParam::new(pointer));
        }
        let id = self
            .module
            .declare_function(name, Linkage::Local, &signature)
            .map_err(cranelift_err)?;
        // 64: a cache line, so a kernel's hot loop never straddles one more
        // than it must.
        self.module
            .define_function_bytes(id, 64, &code.bytes, &[])
            .map_err(|e| CodegenError::Cranelift(format!("{name}: {e:?}")))?;
        self.ids.push(id);
        self.infos.push(KernelInfo {
            name: name.to_string(),
            clif: format!(
                "; {} bytes of assembled {} machine code{}\n",
                code.code_len,
                self.isa,
                match code.bytes.len() - code.code_len {
                    0 => String::new(),
                    data => format!(" + {data} bytes of padding and constants"),
                }
            ),
            disassembly: self
                .keep_disassembly
                .then(|| x86_listing(&code.bytes[..code.code_len])),
            code: Some(code.bytes[..code.code_len].into()),
        });
        Ok(KernelSlot(self.ids.len() - 1))
    }

    /// Compile one kernel taking `params` pointer-sized integer arguments and
    /// returning nothing. `body` starts in the entry block with the
    /// parameters and must terminate every block it creates.
    pub(crate) fn define(
        &mut self,
        name: &str,
        params: usize,
        body: impl FnOnce(&mut Emitter<'_, '_>, &[Value]),
    ) -> Result<KernelSlot, CodegenError> {
        let pointer = self.module.target_config().pointer_type();
        debug_assert_eq!(pointer, types::I64, "kernels assume 64-bit pointers");
        let mut signature = self.module.make_signature();
        for _ in 0..params {
            signature.params.push(AbiParam::new(pointer));
        }
        let id = self
            .module
            .declare_function(name, Linkage::Local, &signature)
            .map_err(cranelift_err)?;
        self.module.clear_context(&mut self.ctx);
        self.ctx.func.signature = signature;
        self.ctx.func.name = UserFuncName::user(0, id.as_u32());
        let constants = self
            .module
            .declare_data_in_func(self.constants_id, &mut self.ctx.func);
        {
            let mut fb = FunctionBuilder::new(&mut self.ctx.func, &mut self.fn_ctx);
            let entry = fb.create_block();
            fb.append_block_params_for_function_params(entry);
            fb.switch_to_block(entry);
            let args = fb.block_params(entry).to_vec();
            let pool = ConstantPool {
                global: constants,
                table: &mut self.constants,
            };
            let mut emitter = Emitter::new(&mut fb, self.features.fma, pool);
            body(&mut emitter, &args);
            fb.seal_all_blocks();
            fb.finalize(self.module.target_config());
        }
        let clif = self.ctx.func.display().to_string();
        self.ctx.set_disasm(self.keep_disassembly);
        self.module
            .define_function(id, &mut self.ctx)
            .map_err(|e| CodegenError::Cranelift(format!("{name}: {e:?}")))?;
        let disassembly = if self.keep_disassembly {
            self.ctx.compiled_code().and_then(|code| code.vcode.clone())
        } else {
            None
        };
        self.ids.push(id);
        self.infos.push(KernelInfo {
            name: name.to_string(),
            clif,
            disassembly,
            code: None,
        });
        Ok(KernelSlot(self.ids.len() - 1))
    }

    /// Link everything; returns the code owner and one entry address per slot.
    pub(crate) fn finish(
        mut self,
    ) -> Result<(FinalizedCode, Vec<usize>, Vec<KernelInfo>), CodegenError> {
        let bytes = std::mem::take(&mut self.constants).into_bytes();
        let mut data = DataDescription::new();
        data.define(bytes.into_boxed_slice());
        data.set_align(16);
        self.module
            .define_data(self.constants_id, &data)
            .map_err(cranelift_err)?;
        self.module.finalize_definitions().map_err(cranelift_err)?;
        let addresses = self
            .ids
            .iter()
            .map(|&id| self.module.get_finalized_function(id) as usize)
            .collect();
        Ok((
            FinalizedCode {
                module: Some(self.module),
            },
            addresses,
            self.infos,
        ))
    }
}

/// Owns the executable memory of a finalized module. Nothing reads the
/// module through `&self`; it is only freed on drop.
pub(crate) struct FinalizedCode {
    module: Option<JITModule>,
}

// SAFETY: after `finalize_definitions` the code and its read-only data are
// immutable, and `FinalizedCode` exposes no method that touches the module
// (whose symbol table has a `RefCell`) through a shared reference: the only
// access is `free_memory` in `drop`, which has exclusive ownership. Sharing
// `&FinalizedCode` across threads therefore shares nothing mutable.
unsafe impl Sync for FinalizedCode {}

impl Drop for FinalizedCode {
    fn drop(&mut self) {
        if let Some(module) = self.module.take() {
            // SAFETY: the owner (`KernelLibrary`) holds the only copies of the
            // code addresses and calls them only through `&self` methods, so
            // once it is being dropped no call is running or can start.
            unsafe { module.free_memory() };
        }
    }
}

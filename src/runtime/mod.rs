//! Running a compiled model: tensors in and out of files (`.npy`,
//! safetensors), and the parameter values a graph is bound to.

pub mod budget;
pub mod exec;
pub mod files;
pub mod image;
pub mod init;
pub mod npy;
pub mod parallel;
pub mod params;
pub mod text;
pub mod weights;

pub use init::materialize;
pub use npy::{read_npy, write_npy, NpyError};
pub use params::{bind_params, bind_params_owned, bind_params_within, BoundParams, ParamError};
pub use weights::{WeightError, WeightFile};

use crate::error::{Result, TrainError};
use candle_core::Device;

/// Parses `auto | cpu | cuda | cuda:N`. `auto` picks CUDA when this build has the `cuda`
/// feature and a GPU answers, else the CPU.
pub fn select_device(spec: &str) -> Result<Device> {
    match spec.trim() {
        "cpu" => Ok(Device::Cpu),
        "auto" => {
            if candle_core::utils::cuda_is_available() {
                Ok(Device::new_cuda(0).unwrap_or(Device::Cpu))
            } else {
                Ok(Device::Cpu)
            }
        }
        s if s == "cuda" || s.starts_with("cuda:") => {
            let ordinal = match s.strip_prefix("cuda:") {
                None => 0,
                Some(n) => n
                    .parse::<usize>()
                    .map_err(|_| TrainError::Other(format!("--device: bad GPU index in `{s}`")))?,
            };
            if !candle_core::utils::cuda_is_available() {
                return Err(TrainError::Other(
                    "--device cuda: this distill was built without CUDA; rebuild with \
                     `cargo build --release --features cuda` (see scripts/setup-cuda.sh)"
                        .into(),
                ));
            }
            Ok(Device::new_cuda(ordinal)?)
        }
        other => Err(TrainError::Other(format!(
            "--device: expected auto, cpu, cuda or cuda:N, got `{other}`"
        ))),
    }
}

/// A short name for reports and `distill.json`.
pub fn device_name(d: &Device) -> String {
    match d {
        Device::Cpu => "cpu".into(),
        Device::Cuda(_) => "cuda".into(),
        Device::Metal(_) => "metal".into(),
    }
}

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

/// Sets the number of CPU threads for training and prediction: the global rayon pool (our own
/// parallel loops) and `RAYON_NUM_THREADS`, which candle's CPU kernels read for their matmul
/// parallelism. `None` keeps `RAYON_NUM_THREADS` if set, else all cores. Returns the count in
/// effect. Call it once, before any parallel work (the global pool can be built only once).
pub fn set_threads(threads: Option<usize>) -> usize {
    let from_env = std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|s| s.parse::<usize>().ok())
        .filter(|&n| n > 0);
    match threads.filter(|&n| n > 0).or(from_env) {
        Some(n) => {
            std::env::set_var("RAYON_NUM_THREADS", n.to_string());
            // Err means a pool already exists (a second call, or a test harness); keep it.
            let _ = rayon::ThreadPoolBuilder::new()
                .num_threads(n)
                .build_global();
            rayon::current_num_threads()
        }
        None => rayon::current_num_threads(),
    }
}

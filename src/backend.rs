//! Choosing where tensors live: burn's wgpu backend (Vulkan, Metal, DX12; Mesa's lavapipe on a
//! machine without a GPU) or burn's ndarray backend on the CPU, and describing the adapters
//! wgpu sees. A machine without an adapter gets an error with a hint, never a panic.

use std::sync::OnceLock;

use burn::tensor::Device;
use burn::tensor::wgpu::{WgpuBackend, wgpu};

use crate::error::{Error, Result};

/// A compute backend the CLI can select.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendKind {
    /// wgpu where a hardware adapter exists; ndarray where wgpu offers only a software
    /// rasteriser (lavapipe), which is slower than ndarray on the same cores.
    Auto,
    /// burn's wgpu backend on the default adapter.
    Wgpu,
    /// burn's ndarray backend (CPU, multi-threaded).
    Ndarray,
}

impl BackendKind {
    /// Parse `--backend`.
    pub fn parse(name: &str) -> Result<Self> {
        match name {
            "auto" => Ok(Self::Auto),
            "wgpu" => Ok(Self::Wgpu),
            "ndarray" | "cpu" => Ok(Self::Ndarray),
            other => Err(Error::Usage(format!("unknown backend `{other}`: expected auto, wgpu or ndarray"))),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Wgpu => "wgpu",
            Self::Ndarray => "ndarray",
        }
    }
}

/// The hint printed where wgpu finds no adapter.
pub const NO_ADAPTER_HINT: &str = "no GPU adapter found by wgpu (Vulkan, Metal, DX12): install Mesa's Vulkan drivers \
     (`apt-get install mesa-vulkan-drivers libvulkan1`) for a software adapter, or use --backend ndarray";

/// What wgpu reports of one adapter.
#[derive(Clone, Debug)]
pub struct AdapterReport {
    pub name: String,
    pub backend: String,
    pub is_vulkan: bool,
    /// A CPU rasteriser (lavapipe, SwiftShader, WARP).
    pub is_software: bool,
    pub device_type: String,
    pub driver: String,
    pub shader_f16: bool,
    pub subgroups: bool,
    pub max_storage_binding: u64,
    pub max_buffer: u64,
    pub max_workgroup_storage: u32,
    pub max_invocations_per_workgroup: u32,
}

/// Every adapter wgpu sees on this machine through the APIs burn uses (Vulkan, Metal, DX12),
/// scanned once per process.
pub fn adapters() -> &'static [AdapterReport] {
    static ADAPTERS: OnceLock<Vec<AdapterReport>> = OnceLock::new();
    ADAPTERS.get_or_init(scan_adapters)
}

fn scan_adapters() -> Vec<AdapterReport> {
    let instance = wgpu::Instance::new(wgpu::InstanceDescriptor {
        backends: wgpu::Backends::PRIMARY,
        ..wgpu::InstanceDescriptor::new_without_display_handle()
    });
    burn::tensor::read_sync(instance.enumerate_adapters(wgpu::Backends::PRIMARY))
        .into_iter()
        .map(|adapter| {
            let info = adapter.get_info();
            let limits = adapter.limits();
            let features = adapter.features();
            AdapterReport {
                name: info.name,
                backend: format!("{:?}", info.backend),
                is_vulkan: info.backend == wgpu::Backend::Vulkan,
                is_software: info.device_type == wgpu::DeviceType::Cpu,
                device_type: format!("{:?}", info.device_type),
                driver: format!("{} {}", info.driver, info.driver_info).trim().to_string(),
                shader_f16: features.contains(wgpu::Features::SHADER_F16),
                subgroups: features.contains(wgpu::Features::SUBGROUP),
                max_storage_binding: limits.max_storage_buffer_binding_size,
                max_buffer: limits.max_buffer_size,
                max_workgroup_storage: limits.max_compute_workgroup_storage_size,
                max_invocations_per_workgroup: limits.max_compute_invocations_per_workgroup,
            }
        })
        .collect()
}

/// What [`BackendKind::Auto`] means on this machine.
pub fn resolve(kind: BackendKind) -> BackendKind {
    match kind {
        BackendKind::Auto if adapters().iter().any(|a| !a.is_software) => BackendKind::Wgpu,
        BackendKind::Auto => BackendKind::Ndarray,
        other => other,
    }
}

/// Open a device on `kind` (resolved first, see [`resolve`]). For wgpu this fails with
/// [`NO_ADAPTER_HINT`] where there is no adapter instead of panicking on first use; the wgpu
/// device is opened once per process and shared.
#[allow(deprecated)] // burn 0.22 deprecates ndarray in favour of flex; the project tests against ndarray
pub fn device(kind: BackendKind) -> Result<Device> {
    match resolve(kind) {
        BackendKind::Wgpu => {
            static WGPU: OnceLock<Result<Device, String>> = OnceLock::new();
            WGPU.get_or_init(open_wgpu).clone().map_err(Error::Device)
        }
        #[cfg(feature = "native")]
        _ => Ok(Device::ndarray()),
        #[cfg(not(feature = "native"))]
        _ => Err(Error::Device("the CPU backend needs the native build (feature `native`)".into())),
    }
}

/// The wgpu handles of [`device`]'s wgpu device, for more burn devices on them.
#[cfg(not(target_family = "wasm"))]
static DEFAULT_SETUP: OnceLock<burn::tensor::wgpu::WgpuSetup> = OnceLock::new();

fn open_wgpu() -> Result<Device, String> {
    let adapters = adapters();
    if adapters.is_empty() {
        return Err(NO_ADAPTER_HINT.to_string());
    }
    let mut options = Device::wgpu_options();
    // burn's automatic choice probes OpenGL too when Vulkan offers only a software adapter,
    // and Mesa's EGL then prints errors on headless machines; Vulkan, where present, is what
    // we want anyway.
    if adapters.iter().any(|a| a.is_vulkan) {
        options = options.graphics_api(WgpuBackend::Vulkan);
    }
    #[cfg(not(target_family = "wasm"))]
    return options
        .init_with_setup()
        .map(|(device, setup)| {
            let _ = DEFAULT_SETUP.set(setup);
            device
        })
        .map_err(|e| format!("wgpu could not open an adapter: {e}; {NO_ADAPTER_HINT}"));
    // a browser opens its device asynchronously (`Device::wgpu_options().init_async()`, as
    // web/src/lib.rs does)
    #[cfg(target_family = "wasm")]
    {
        drop(options);
        Err("in a browser, open WebGPU with Device::wgpu_options().init_async()".to_string())
    }
}

/// The name of the adapter a wgpu device runs on.
pub fn device_name(device: &Device) -> Option<String> {
    device.identity().map(|id| id.name)
}

/// The largest tensor, in bytes, that `device` can hold in one buffer and bind to a kernel:
/// on wgpu the smaller of its adapter's maximum storage binding and maximum buffer (128 MiB
/// on lavapipe and in browsers, gigabytes on most GPUs); `None` on the CPU backend (no limit
/// but memory).
pub fn max_tensor_bytes(device: &Device) -> Option<u64> {
    let name = device_name(device)?;
    adapters().iter().find(|a| a.name == name).map(|a| a.max_storage_binding.min(a.max_buffer))
}

/// An error where a tensor of `bytes` (`what`) cannot be one buffer on `device`
/// ([`max_tensor_bytes`]), with `hint` on what makes it smaller.
pub fn check_tensor_fits(device: &Device, bytes: u64, what: &str, hint: &str) -> Result<()> {
    match max_tensor_bytes(device) {
        Some(limit) if bytes > limit => Err(Error::Device(format!(
            "{what} takes {} MiB in one buffer, above the {} MiB this adapter ({}) can bind: {hint}",
            bytes.div_ceil(1 << 20),
            limit >> 20,
            device_name(device).unwrap_or_default()
        ))),
        _ => Ok(()),
    }
}

/// The devices of `--devices`: `cpu:N` (N shards on burn's ndarray backend, which has one
/// device: training runs each shard on its own thread, so N cores work at once)
/// or comma-separated wgpu adapter indices as `dinov2 info` lists them (`0,1,2,3`). An index
/// given twice opens a second handle on the same adapter, sharing its wgpu device and queue.
#[cfg(feature = "native")]
pub fn devices(spec: &str) -> Result<Vec<Device>> {
    let spec = spec.trim();
    if let Some(rest) = spec.strip_prefix("cpu") {
        let n = match rest.strip_prefix(':') {
            Some(n) => n.parse::<usize>().ok().filter(|&n| n >= 1),
            None if rest.is_empty() => Some(1),
            None => None,
        }
        .ok_or_else(|| {
            Error::Usage(format!(
                "--devices {spec}: expected cpu:N with N ≥ 1, or wgpu adapter indices like 0,1"
            ))
        })?;
        #[allow(deprecated)] // see `device`
        return Ok(vec![Device::ndarray(); n]);
    }
    let indices = spec
        .split(',')
        .map(|s| s.trim().parse::<usize>())
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|_| {
            Error::Usage(format!("--devices {spec}: expected cpu:N, or wgpu adapter indices like 0,1"))
        })?;
    let adapters = adapters();
    let mut seen = std::collections::HashMap::<usize, usize>::new();
    indices
        .into_iter()
        .map(|i| {
            if i >= adapters.len() {
                return Err(Error::Usage(format!(
                    "--devices {spec}: no wgpu adapter {i} (this machine has {}; `dinov2 info` lists them)",
                    adapters.len()
                )));
            }
            let occurrence = seen.entry(i).or_insert(0);
            *occurrence += 1;
            wgpu_adapter(i, *occurrence - 1)
        })
        .collect()
}

/// A burn device on wgpu adapter `index` of [`adapters`] (`copy` > 0: another handle on the
/// same wgpu device), opened once per process.
#[cfg(feature = "native")]
fn wgpu_adapter(index: usize, copy: usize) -> Result<Device> {
    use burn::tensor::DeviceKind;
    use burn::tensor::wgpu::WgpuSetup;
    use std::collections::HashMap;
    use std::sync::Mutex;
    /// (adapter, copy) → its device and the wgpu handles behind it
    type Opened = HashMap<(usize, usize), (Device, WgpuSetup)>;
    static OPEN: Mutex<Option<Opened>> = Mutex::new(None);
    if copy > 0 {
        wgpu_adapter(index, 0)?;
    }
    let mut guard = OPEN.lock().unwrap_or_else(|e| e.into_inner());
    let open = guard.get_or_insert_with(HashMap::new);
    if let Some((device, _)) = open.get(&(index, copy)) {
        return Ok(device.clone());
    }
    let fail = |e: burn::tensor::wgpu::WgpuInitError| Error::Device(format!("wgpu adapter {index}: {e}"));
    let adapters = adapters();
    let a = &adapters[index];
    // the adapter `--backend wgpu` runs on: its device, not a second one
    let default = device(BackendKind::Wgpu)
        .ok()
        .filter(|d| device_name(d).as_deref() == Some(a.name.as_str()))
        .zip(DEFAULT_SETUP.get().cloned());
    let opened = if let (0, Some(default)) = (copy, default) {
        default
    } else if copy == 0 {
        // wgpu numbers adapters per type and per graphics API
        let nth = adapters[..index]
            .iter()
            .filter(|o| o.device_type == a.device_type && o.backend == a.backend)
            .count();
        let kind = match a.device_type.as_str() {
            "DiscreteGpu" => DeviceKind::DiscreteGpu(nth),
            "IntegratedGpu" => DeviceKind::IntegratedGpu(nth),
            "VirtualGpu" => DeviceKind::VirtualGpu(nth),
            "Cpu" => DeviceKind::Cpu,
            other => {
                return Err(Error::Device(format!(
                    "wgpu adapter {index} is of type {other}, which burn cannot select"
                )));
            }
        };
        let api = match a.backend.as_str() {
            "Vulkan" => WgpuBackend::Vulkan,
            "Metal" => WgpuBackend::Metal,
            "Dx12" => WgpuBackend::Dx12,
            _ => WgpuBackend::Auto,
        };
        Device::wgpu_options().device_kind(kind).graphics_api(api).init_with_setup().map_err(fail)?
    } else {
        let first = open.get(&(index, 0)).expect("opened above").1.clone();
        let device = Device::wgpu_options().setup(first.clone()).init().map_err(fail)?;
        (device, first)
    };
    open.insert((index, copy), opened.clone());
    Ok(opened.0)
}

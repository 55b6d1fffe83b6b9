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
    return options.init().map_err(|e| format!("wgpu could not open an adapter: {e}; {NO_ADAPTER_HINT}"));
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

//! The `dinov2` command: parses arguments and calls the library; any error is one line on
//! stderr and exit code 1.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    if std::env::var_os("XDG_RUNTIME_DIR").is_none() && std::env::var_os("NODEVICE_SELECT").is_none() {
        // Headless: Mesa's implicit Vulkan device-select layer would try to reach a Wayland
        // display and print "XDG_RUNTIME_DIR is invalid" several times. It only orders GPUs for
        // a desktop session, so switch it off.
        // SAFETY: no other thread exists yet.
        unsafe { std::env::set_var("NODEVICE_SELECT", "1") };
    }
    let cli = dinov2_wgpu::cli::Cli::parse();
    if cli.trains_on_cpu_shards() && std::env::var_os("MATMUL_NUM_THREADS").is_none() {
        // A device per core: the matrix products of the CPU backend (matrixmultiply) would
        // otherwise split each product over every core too, and the shards' threads spin
        // waiting for each other (width-256 tiny recipe on 2 cores: 90 images/s, 106-111 with
        // one thread per product; BENCHMARKS.md, "Training throughput").
        // SAFETY: no other thread exists yet.
        unsafe { std::env::set_var("MATMUL_NUM_THREADS", "1") };
    }
    match dinov2_wgpu::cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Device errors from wgpu can span lines; the CLI promises one.
            let message = e.to_string();
            let one_line: Vec<&str> = message.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
            eprintln!("error: {}", one_line.join("; "));
            ExitCode::FAILURE
        }
    }
}

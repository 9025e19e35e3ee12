//! The one list of CPU features each SIMD kernel set needs, as cfg names the code tests
//! (`#[cfg(kv_avx2)]`) instead of repeating the `target_feature` list at every use.
//! Features come from the build's target (`-C target-cpu=native` in .cargo/config.toml).

fn main() {
    println!("cargo::rustc-check-cfg=cfg(kv_avx2)");
    println!("cargo::rustc-check-cfg=cfg(kv_vnni)");
    println!("cargo::rerun-if-changed=build.rs");
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    let feats = std::env::var("CARGO_CFG_TARGET_FEATURE").unwrap_or_default();
    let has = |f: &str| feats.split(',').any(|x| x == f);
    let x86 = arch == "x86_64";
    // AVX2 kernels: 256-bit integer ops, FMA for the float steps, F16C for the scales.
    let avx2 = x86 && ["avx2", "fma", "f16c"].iter().all(|f| has(f));
    if avx2 {
        println!("cargo::rustc-cfg=kv_avx2");
    }
    // AVX-512 VNNI (8-bit dot products in one instruction), on top of the AVX2 set.
    if avx2
        && ["avx512f", "avx512bw", "avx512vnni", "avx512vl"]
            .iter()
            .all(|f| has(f))
    {
        println!("cargo::rustc-cfg=kv_vnni");
    }
}

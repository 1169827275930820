//! The i32 tile kernels behind [`super::QuantizedLinear`], chosen at run time by CPU features:
//! AVX-512 VNNI (`vpdpbusd` on zmm), AVX-VNNI (its VEX form on ymm), AVX2 (`vpmaddubsw` +
//! `vpmaddwd`) and a portable one. Each computes, for up to `mr` activation rows and `np` panels,
//! the exact integer dot products; what differs is only how many lanes do it at once.

use super::{quantize_row, BLOCK, PANEL};

/// Most rows in a tile (any kernel).
pub const MAX_ROWS: usize = 6;
/// i32 slots per row of the tile buffer: four panels, the widest tile.
pub const ACC_STRIDE: usize = 4 * PANEL;
pub const ACC_LEN: usize = MAX_ROWS * ACC_STRIDE;

/// Which int8 kernel runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernel {
    /// Plain Rust: the fallback on any CPU (slow: a warning says so at load).
    Scalar,
    /// AVX2: |a| · sign(a)·w with `vpmaddubsw`, pairs summed by `vpmaddwd`.
    Avx2,
    /// AVX-VNNI (VEX `vpdpbusd` on ymm; Alder Lake and later without AVX-512).
    AvxVnni,
    /// AVX-512 VNNI (`vpdpbusd` on zmm; Cascade Lake, Ice Lake, Sapphire Rapids, Zen 4).
    Avx512Vnni,
}

impl Kernel {
    pub fn as_str(&self) -> &'static str {
        match self {
            Kernel::Scalar => "scalar",
            Kernel::Avx2 => "avx2",
            Kernel::AvxVnni => "avx-vnni",
            Kernel::Avx512Vnni => "avx512-vnni",
        }
    }

    /// Whether this CPU can run the kernel.
    pub fn supported(&self) -> bool {
        match self {
            Kernel::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => std::arch::is_x86_feature_detected!("avx2"),
            #[cfg(target_arch = "x86_64")]
            Kernel::AvxVnni => {
                std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("avxvnni")
            }
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512Vnni => {
                std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx512bw")
                    && std::arch::is_x86_feature_detected!("avx512vnni")
            }
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }

    /// Every kernel this CPU runs, fastest last.
    pub fn available() -> Vec<Kernel> {
        [
            Kernel::Scalar,
            Kernel::Avx2,
            Kernel::AvxVnni,
            Kernel::Avx512Vnni,
        ]
        .into_iter()
        .filter(Kernel::supported)
        .collect()
    }

    /// The fastest kernel this CPU runs, unless `DISTILL_INT8_KERNEL` names one (benchmarks and
    /// tests); a named kernel the CPU lacks is an error.
    pub fn detect() -> Result<Kernel, String> {
        match std::env::var("DISTILL_INT8_KERNEL") {
            Ok(name) if !name.is_empty() => {
                let k: Kernel = name.parse()?;
                if k.supported() {
                    Ok(k)
                } else {
                    Err(format!(
                        "DISTILL_INT8_KERNEL={name}: this CPU lacks the instructions it needs \
                         (available: {})",
                        Kernel::available()
                            .iter()
                            .map(Kernel::as_str)
                            .collect::<Vec<_>>()
                            .join(", ")
                    ))
                }
            }
            _ => Ok(*Kernel::available().last().unwrap_or(&Kernel::Scalar)),
        }
    }

    /// (rows, panels) of one tile: as many accumulators as the registers hold.
    pub(super) fn tile(&self) -> (usize, usize) {
        match self {
            Kernel::Scalar => (4, 1),
            Kernel::Avx2 => (4, 1),
            Kernel::AvxVnni => (6, 1),
            Kernel::Avx512Vnni => (6, 4),
        }
    }

    /// The row quantiser, compiled for the kernel's instruction set (same results everywhere:
    /// no operation in it is fused or reordered).
    #[inline]
    pub(super) fn quantize_row(&self, row: &[f32], out: &mut [i8]) -> f32 {
        #[cfg(target_arch = "x86_64")]
        if *self != Kernel::Scalar {
            // SAFETY: every non-scalar kernel is chosen only where AVX2 is present.
            return unsafe { quantize_row_avx2(row, out) };
        }
        quantize_row(row, out)
    }

    /// Fills `acc[r * ACC_STRIDE + p * PANEL + j]` with Σₖ a[r][k] · w[p·16 + j][k] for
    /// `rows` ≤ tile rows and `np` ≤ tile panels.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn tile_sums(
        &self,
        a: &[i8],
        a_stride: usize,
        rows: usize,
        w: &[i8],
        groups: usize,
        np: usize,
        col_sums: &[i32],
        acc: &mut [i32; ACC_LEN],
    ) {
        let (mr, mp) = self.tile();
        assert!(rows >= 1 && rows <= mr && np >= 1 && np <= mp);
        assert!(a_stride >= groups * 4 && a.len() >= (rows - 1) * a_stride + groups * 4);
        assert!(w.len() >= np * groups * BLOCK && col_sums.len() >= np * PANEL);
        match self {
            Kernel::Scalar => tile_scalar(a, a_stride, rows, w, groups, np, acc),
            #[cfg(target_arch = "x86_64")]
            // SAFETY (all three): the CPU has the features (a kernel is only chosen when
            // `supported`), and the asserts above bound every load and store the kernels make.
            Kernel::Avx2 => unsafe {
                x86::avx2(a.as_ptr(), a_stride, rows, w.as_ptr(), groups, acc)
            },
            #[cfg(target_arch = "x86_64")]
            Kernel::AvxVnni => unsafe {
                x86::avxvnni(
                    a.as_ptr(),
                    a_stride,
                    rows,
                    w.as_ptr(),
                    groups,
                    col_sums,
                    acc,
                )
            },
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512Vnni => unsafe {
                x86::avx512vnni(
                    a.as_ptr(),
                    a_stride,
                    rows,
                    w.as_ptr(),
                    groups,
                    np,
                    col_sums,
                    acc,
                )
            },
            #[cfg(not(target_arch = "x86_64"))]
            _ => tile_scalar(a, a_stride, rows, w, groups, np, acc),
        }
    }
}

impl std::str::FromStr for Kernel {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "scalar" => Ok(Kernel::Scalar),
            "avx2" => Ok(Kernel::Avx2),
            "avx-vnni" | "avxvnni" => Ok(Kernel::AvxVnni),
            "avx512-vnni" | "avx512vnni" => Ok(Kernel::Avx512Vnni),
            other => Err(format!(
                "unknown int8 kernel `{other}` (expected scalar, avx2, avx-vnni or avx512-vnni)"
            )),
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn quantize_row_avx2(row: &[f32], out: &mut [i8]) -> f32 {
    quantize_row(row, out)
}

fn tile_scalar(
    a: &[i8],
    a_stride: usize,
    rows: usize,
    w: &[i8],
    groups: usize,
    np: usize,
    acc: &mut [i32; ACC_LEN],
) {
    for r in 0..rows {
        let ar = &a[r * a_stride..r * a_stride + groups * 4];
        for p in 0..np {
            let wp = &w[p * groups * BLOCK..(p + 1) * groups * BLOCK];
            let mut sums = [0i32; PANEL];
            for (g, a4) in ar.chunks_exact(4).enumerate() {
                let block = &wp[g * BLOCK..(g + 1) * BLOCK];
                for (j, s) in sums.iter_mut().enumerate() {
                    for t in 0..4 {
                        *s += a4[t] as i32 * block[j * 4 + t] as i32;
                    }
                }
            }
            acc[r * ACC_STRIDE + p * PANEL..r * ACC_STRIDE + (p + 1) * PANEL]
                .copy_from_slice(&sums);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{ACC_LEN, ACC_STRIDE, BLOCK, PANEL};
    use std::arch::x86_64::*;

    /// Four activation bytes of row `r`, group `g`, as one i32 to broadcast.
    #[inline(always)]
    unsafe fn a4(a: *const i8, a_stride: usize, r: usize, g: usize) -> i32 {
        (a.add(r * a_stride + g * 4) as *const i32).read_unaligned()
    }

    // Each entry point dispatches the row count (and panel count) to a const-generic body, so
    // the accumulators are a fixed set of registers and every inner loop unrolls.
    macro_rules! by_rows {
        ($f:ident, $rows:expr, ($($arg:expr),*)) => {
            by_rows!($f::<>, $rows, ($($arg),*))
        };
        ($f:ident::<$($p:literal),*>, $rows:expr, ($($arg:expr),*)) => {
            match $rows {
                1 => $f::<1 $(, $p)*>($($arg),*),
                2 => $f::<2 $(, $p)*>($($arg),*),
                3 => $f::<3 $(, $p)*>($($arg),*),
                4 => $f::<4 $(, $p)*>($($arg),*),
                5 => $f::<5 $(, $p)*>($($arg),*),
                _ => $f::<6 $(, $p)*>($($arg),*),
            }
        };
    }

    /// AVX2: per (row, group) one broadcast of four activation bytes; |a| (unsigned) times
    /// sign(a)·w (signed) by `vpmaddubsw` gives pairs of products whose sum is at most
    /// 2·127·127 < 2¹⁵, so it never saturates; `vpmaddwd` by ones sums the pairs into i32.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn avx2(
        a: *const i8,
        a_stride: usize,
        rows: usize,
        w: *const i8,
        groups: usize,
        acc: &mut [i32; ACC_LEN],
    ) {
        match rows {
            1 => avx2_rows::<1>(a, a_stride, w, groups, acc),
            2 => avx2_rows::<2>(a, a_stride, w, groups, acc),
            3 => avx2_rows::<3>(a, a_stride, w, groups, acc),
            _ => avx2_rows::<4>(a, a_stride, w, groups, acc),
        }
    }

    #[target_feature(enable = "avx2")]
    unsafe fn avx2_rows<const R: usize>(
        a: *const i8,
        a_stride: usize,
        w: *const i8,
        groups: usize,
        acc: &mut [i32; ACC_LEN],
    ) {
        let ones = _mm256_set1_epi16(1);
        let mut c = [[_mm256_setzero_si256(); 2]; R];
        for g in 0..groups {
            let w0 = _mm256_loadu_si256(w.add(g * BLOCK) as *const __m256i);
            let w1 = _mm256_loadu_si256(w.add(g * BLOCK + 32) as *const __m256i);
            for (r, cr) in c.iter_mut().enumerate() {
                let av = _mm256_set1_epi32(a4(a, a_stride, r, g));
                let ax = _mm256_sign_epi8(av, av);
                let p0 = _mm256_maddubs_epi16(ax, _mm256_sign_epi8(w0, av));
                let p1 = _mm256_maddubs_epi16(ax, _mm256_sign_epi8(w1, av));
                cr[0] = _mm256_add_epi32(cr[0], _mm256_madd_epi16(p0, ones));
                cr[1] = _mm256_add_epi32(cr[1], _mm256_madd_epi16(p1, ones));
            }
        }
        for (r, cr) in c.iter().enumerate() {
            let out = acc.as_mut_ptr().add(r * ACC_STRIDE);
            _mm256_storeu_si256(out as *mut __m256i, cr[0]);
            _mm256_storeu_si256(out.add(8) as *mut __m256i, cr[1]);
        }
    }

    /// The 256-bit VNNI body, shared by the VEX (AVX-VNNI) and EVEX (AVX-512VL) encodings:
    /// a + 128 as unsigned bytes times w, then 128·Σw subtracted, exactly Σ a·w.
    macro_rules! vnni256_body {
        ($dpbusd:ident, $a:ident, $a_stride:ident, $w:ident, $groups:ident, $col_sums:ident, $acc:ident, $R:ident) => {{
            let flip = 0x8080_8080u32 as i32;
            let mut c = [[_mm256_setzero_si256(); 2]; $R];
            for g in 0..$groups {
                let w0 = _mm256_loadu_si256($w.add(g * BLOCK) as *const __m256i);
                let w1 = _mm256_loadu_si256($w.add(g * BLOCK + 32) as *const __m256i);
                for (r, cr) in c.iter_mut().enumerate() {
                    let av = _mm256_set1_epi32(a4($a, $a_stride, r, g) ^ flip);
                    cr[0] = $dpbusd(cr[0], av, w0);
                    cr[1] = $dpbusd(cr[1], av, w1);
                }
            }
            let comp0 =
                _mm256_slli_epi32(_mm256_loadu_si256($col_sums.as_ptr() as *const __m256i), 7);
            let comp1 = _mm256_slli_epi32(
                _mm256_loadu_si256($col_sums.as_ptr().add(8) as *const __m256i),
                7,
            );
            for (r, cr) in c.iter().enumerate() {
                let out = $acc.as_mut_ptr().add(r * ACC_STRIDE);
                _mm256_storeu_si256(out as *mut __m256i, _mm256_sub_epi32(cr[0], comp0));
                _mm256_storeu_si256(out.add(8) as *mut __m256i, _mm256_sub_epi32(cr[1], comp1));
            }
        }};
    }

    #[target_feature(enable = "avx2,avxvnni")]
    pub(super) unsafe fn avxvnni(
        a: *const i8,
        a_stride: usize,
        rows: usize,
        w: *const i8,
        groups: usize,
        col_sums: &[i32],
        acc: &mut [i32; ACC_LEN],
    ) {
        by_rows!(avxvnni_rows, rows, (a, a_stride, w, groups, col_sums, acc))
    }

    #[target_feature(enable = "avx2,avxvnni")]
    unsafe fn avxvnni_rows<const R: usize>(
        a: *const i8,
        a_stride: usize,
        w: *const i8,
        groups: usize,
        col_sums: &[i32],
        acc: &mut [i32; ACC_LEN],
    ) {
        vnni256_body!(
            _mm256_dpbusd_avx_epi32,
            a,
            a_stride,
            w,
            groups,
            col_sums,
            acc,
            R
        )
    }

    /// The AVX-VNNI body in its EVEX encoding: what the tests run on CPUs that have AVX-512 VNNI
    /// but not the VEX form, so the shared body is checked wherever either exists.
    #[cfg(test)]
    #[target_feature(enable = "avx512f,avx512vl,avx512vnni")]
    pub(crate) unsafe fn vnni256_evex(
        a: *const i8,
        a_stride: usize,
        rows: usize,
        w: *const i8,
        groups: usize,
        col_sums: &[i32],
        acc: &mut [i32; ACC_LEN],
    ) {
        by_rows!(
            vnni256_evex_rows,
            rows,
            (a, a_stride, w, groups, col_sums, acc)
        )
    }

    #[cfg(test)]
    #[target_feature(enable = "avx512f,avx512vl,avx512vnni")]
    unsafe fn vnni256_evex_rows<const R: usize>(
        a: *const i8,
        a_stride: usize,
        w: *const i8,
        groups: usize,
        col_sums: &[i32],
        acc: &mut [i32; ACC_LEN],
    ) {
        vnni256_body!(
            _mm256_dpbusd_epi32,
            a,
            a_stride,
            w,
            groups,
            col_sums,
            acc,
            R
        )
    }

    /// AVX-512 VNNI: up to 6 rows × 4 panels (64 columns) = 24 zmm accumulators; per group four
    /// weight loads and one broadcast per row feed 4·rows `vpdpbusd`.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub(super) unsafe fn avx512vnni(
        a: *const i8,
        a_stride: usize,
        rows: usize,
        w: *const i8,
        groups: usize,
        np: usize,
        col_sums: &[i32],
        acc: &mut [i32; ACC_LEN],
    ) {
        match np {
            1 => by_rows!(
                avx512_tile::<1>,
                rows,
                (a, a_stride, w, groups, col_sums, acc)
            ),
            2 => by_rows!(
                avx512_tile::<2>,
                rows,
                (a, a_stride, w, groups, col_sums, acc)
            ),
            3 => by_rows!(
                avx512_tile::<3>,
                rows,
                (a, a_stride, w, groups, col_sums, acc)
            ),
            _ => by_rows!(
                avx512_tile::<4>,
                rows,
                (a, a_stride, w, groups, col_sums, acc)
            ),
        }
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn avx512_tile<const R: usize, const P: usize>(
        a: *const i8,
        a_stride: usize,
        w: *const i8,
        groups: usize,
        col_sums: &[i32],
        acc: &mut [i32; ACC_LEN],
    ) {
        let flip = 0x8080_8080u32 as i32;
        let panel_stride = groups * BLOCK;
        let mut c = [[_mm512_setzero_si512(); P]; R];
        for g in 0..groups {
            let mut wv = [_mm512_setzero_si512(); P];
            for (p, v) in wv.iter_mut().enumerate() {
                *v = _mm512_loadu_si512(w.add(p * panel_stride + g * BLOCK) as *const __m512i);
            }
            for (r, cr) in c.iter_mut().enumerate() {
                let av = _mm512_set1_epi32(a4(a, a_stride, r, g) ^ flip);
                for (cp, &wp) in cr.iter_mut().zip(&wv) {
                    *cp = _mm512_dpbusd_epi32(*cp, av, wp);
                }
            }
        }
        for p in 0..P {
            let comp = _mm512_slli_epi32(
                _mm512_loadu_si512(col_sums.as_ptr().add(p * PANEL) as *const __m512i),
                7,
            );
            for (r, cr) in c.iter().enumerate() {
                let out = acc.as_mut_ptr().add(r * ACC_STRIDE + p * PANEL);
                _mm512_storeu_si512(out as *mut __m512i, _mm512_sub_epi32(cr[p], comp));
            }
        }
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;

    /// The AVX-VNNI body, run through its EVEX twin where this CPU has AVX-512 VNNI + VL.
    #[test]
    fn the_256_bit_vnni_body_matches_the_scalar_tile() {
        let has = std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512vl")
            && std::arch::is_x86_feature_detected!("avx512vnni");
        if !has {
            eprintln!("skipped: no AVX-512 VNNI + VL on this CPU");
            return;
        }
        let (rows, groups) = (6, 13);
        let a: Vec<i8> = (0..rows * groups * 4)
            .map(|i| ((i * 37 % 255) as i32 - 127) as i8)
            .collect();
        let w: Vec<i8> = (0..groups * BLOCK)
            .map(|i| ((i * 91 % 255) as i32 - 127) as i8)
            .collect();
        let mut col_sums = vec![0i32; PANEL];
        for g in 0..groups {
            for j in 0..PANEL {
                for t in 0..4 {
                    col_sums[j] += w[g * BLOCK + j * 4 + t] as i32;
                }
            }
        }
        for r in 1..=rows {
            let mut want = [0i32; ACC_LEN];
            tile_scalar(&a, groups * 4, r, &w, groups, 1, &mut want);
            let mut got = [0i32; ACC_LEN];
            // SAFETY: the features were detected above; the buffers hold r rows and one panel.
            unsafe {
                x86::vnni256_evex(
                    a.as_ptr(),
                    groups * 4,
                    r,
                    w.as_ptr(),
                    groups,
                    &col_sums,
                    &mut got,
                )
            };
            assert_eq!(got[..r * ACC_STRIDE], want[..r * ACC_STRIDE], "rows={r}");
        }
    }
}

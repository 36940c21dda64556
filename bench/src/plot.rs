//! PNG plots for docs/bench/: plotters draws into an RGB buffer (its bitmap backend, text with
//! ab_glyph and the system's DejaVu Sans), and a few lines here write the PNG with flate2, which
//! the driver already uses (no image crate).

use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};
use plotters::prelude::*;

use crate::stats::Samples;

const W: u32 = 900;
const H: u32 = 500;
const FONTS: [&str; 2] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
];
const COLORS: [RGBColor; 4] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x2c, 0xa0, 0x2c),
];

/// Registers the font once; plotters needs one to draw any text.
fn font() -> Result<()> {
    static DONE: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    DONE.get_or_init(|| {
        let bytes = FONTS
            .iter()
            .find_map(|p| std::fs::read(p).ok())
            .ok_or_else(|| format!("no font at {FONTS:?} (Debian: fonts-dejavu-core)"))?;
        let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
            .map_err(|_| "invalid font".to_string())
    })
    .clone()
    .map_err(anyhow::Error::msg)
}

fn crc32(data: &[u8]) -> u32 {
    let mut c = 0xffff_ffffu32;
    for &b in data {
        c ^= u32::from(b);
        for _ in 0..8 {
            c = if c & 1 != 0 {
                0xedb8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
        }
    }
    !c
}

/// An 8-bit RGB image as PNG (no filtering, zlib).
pub fn write_png(path: &Path, w: u32, h: u32, rgb: &[u8]) -> Result<()> {
    let mut raw = Vec::with_capacity((w as usize * 3 + 1) * h as usize);
    for row in rgb.chunks(w as usize * 3) {
        raw.push(0);
        raw.extend_from_slice(row);
    }
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    z.write_all(&raw)?;
    let idat = z.finish()?;
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&w.to_be_bytes());
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    for (kind, data) in [(b"IHDR", &ihdr), (b"IDAT", &idat), (b"IEND", &Vec::new())] {
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let mut body = kind.to_vec();
        body.extend_from_slice(data);
        out.extend_from_slice(&body);
        out.extend_from_slice(&crc32(&body).to_be_bytes());
    }
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d)?;
    }
    std::fs::write(path, out).with_context(|| format!("{}", path.display()))
}

fn draw<F>(path: &Path, f: F) -> Result<()>
where
    F: FnOnce(&DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>) -> Result<()>,
{
    font()?;
    let mut buf = vec![0u8; (W * H * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (W, H)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e}"))?;
        f(&root)?;
        root.present().map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    write_png(path, W, H, &buf)
}

fn e<E: std::fmt::Display>(e: E) -> anyhow::Error {
    anyhow::anyhow!("{e}")
}

/// Grouped bars on a log scale: for each group (x label), one bar per series; `values[g][s]`.
pub fn bars_log(
    path: &Path,
    title: &str,
    y_label: &str,
    groups: &[String],
    series: &[&str],
    values: &[Vec<f64>],
) -> Result<()> {
    let all: Vec<f64> = values
        .iter()
        .flatten()
        .copied()
        .filter(|v| v.is_finite() && *v > 0.0)
        .collect();
    let lo = all.iter().copied().fold(f64::INFINITY, f64::min).max(1e-6) / 2.0;
    let hi = all.iter().copied().fold(0.0, f64::max).max(lo * 10.0) * 3.0;
    draw(path, |root| {
        let n = groups.len().max(1);
        let mut chart = ChartBuilder::on(root)
            .caption(title, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d(0f64..n as f64, (lo..hi).log_scale())
            .map_err(e)?;
        let labels = groups.to_vec();
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(n * 2 + 1)
            .x_label_formatter(&move |x| {
                let i = x.floor() as usize;
                if (x - x.floor() - 0.5).abs() < 1e-6 && i < labels.len() {
                    labels[i].clone()
                } else {
                    String::new()
                }
            })
            .y_desc(y_label)
            .label_style(("sans-serif", 14))
            .draw()
            .map_err(e)?;
        let k = series.len().max(1) as f64;
        let width = 0.8 / k;
        for (s, name) in series.iter().enumerate() {
            let color = COLORS[s % COLORS.len()];
            let rects = values.iter().enumerate().filter_map(|(g, v)| {
                let y = *v.get(s)?;
                if !(y.is_finite() && y > 0.0) {
                    return None;
                }
                let x0 = g as f64 + 0.1 + s as f64 * width;
                Some(Rectangle::new(
                    [(x0, lo), (x0 + width * 0.9, y)],
                    color.filled(),
                ))
            });
            chart
                .draw_series(rects)
                .map_err(e)?
                .label(*name)
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 10, y + 5)], color.filled())
                });
            // The value above each bar.
            let texts = values.iter().enumerate().filter_map(|(g, v)| {
                let y = *v.get(s)?;
                if !(y.is_finite() && y > 0.0) {
                    return None;
                }
                let x0 = g as f64 + 0.1 + s as f64 * width;
                let t = if y >= 10.0 {
                    format!("{y:.0}")
                } else {
                    format!("{y:.2}")
                };
                Some(Text::new(t, (x0, y * 1.15), ("sans-serif", 12)))
            });
            chart.draw_series(texts).map_err(e)?;
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperLeft)
            .label_font(("sans-serif", 14))
            .draw()
            .map_err(e)?;
        Ok(())
    })
}

/// Cumulative distributions of latency samples (ms, log x axis).
pub fn cdf(path: &Path, title: &str, x_label: &str, series: &[(&str, &Samples)]) -> Result<()> {
    let all: Vec<f64> = series
        .iter()
        .flat_map(|(_, s)| s.ms.iter().copied())
        .filter(|v| v.is_finite() && *v > 0.0)
        .collect();
    let lo = all.iter().copied().fold(f64::INFINITY, f64::min).max(1e-3) / 1.5;
    let hi = all.iter().copied().fold(0.0, f64::max).max(lo * 10.0) * 1.5;
    draw(path, |root| {
        let mut chart = ChartBuilder::on(root)
            .caption(title, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d((lo..hi).log_scale(), 0f64..1.0)
            .map_err(e)?;
        chart
            .configure_mesh()
            .x_desc(x_label)
            .y_desc("fraction of runs ≤ x")
            .label_style(("sans-serif", 14))
            .draw()
            .map_err(e)?;
        for (i, (name, s)) in series.iter().enumerate() {
            let mut v: Vec<f64> = s.ms.iter().copied().filter(|x| *x > 0.0).collect();
            if v.is_empty() {
                continue;
            }
            v.sort_by(f64::total_cmp);
            let n = v.len() as f64;
            let color = COLORS[i % COLORS.len()];
            let pts: Vec<(f64, f64)> = v
                .iter()
                .enumerate()
                .flat_map(|(k, x)| [(*x, k as f64 / n), (*x, (k + 1) as f64 / n)])
                .collect();
            chart
                .draw_series(LineSeries::new(pts, color.stroke_width(2)))
                .map_err(e)?
                .label(format!("{name} (n = {})", v.len()))
                .legend(move |(x, y)| {
                    PathElement::new([(x, y), (x + 20, y)], color.stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .position(SeriesLabelPosition::LowerRight)
            .label_font(("sans-serif", 14))
            .draw()
            .map_err(e)?;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc_of_iend() {
        // The IEND chunk's CRC every PNG ends with.
        assert_eq!(crc32(b"IEND"), 0xae42_6082);
    }
}

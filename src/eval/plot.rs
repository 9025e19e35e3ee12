//! Figures: NIAH heatmaps and score-vs-memory line plots, as SVG and PNG (plotters), and
//! the terminal heatmap. Everything is drawn with plain shapes at computed pixel
//! positions rather than plotters' chart builder, because the chart builder measures
//! text with a font even for SVG, and kvscope must draw without system font libraries:
//! SVG text needs no font at all, and PNG text uses a TrueType file read at run time
//! (ab_glyph). Without one, the PNG is drawn without its labels and the SVG keeps them.

use anyhow::{anyhow, Result};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// One heatmap: rows are context lengths, columns needle depths; `None` is not run yet.
#[derive(Debug, Clone, PartialEq)]
pub struct HeatPanel {
    pub title: String,
    pub values: Vec<Vec<Option<f64>>>,
}

/// A grid of heatmaps sharing their axes (rows of panels: methods; columns: budgets).
#[derive(Debug, Clone, PartialEq)]
pub struct HeatFigure {
    pub title: String,
    pub row_labels: Vec<String>,
    pub col_labels: Vec<String>,
    pub panels: Vec<Vec<HeatPanel>>,
}

const CELL_W: u32 = 34;
const CELL_H: u32 = 24;
const LABEL_W: u32 = 44;
const PANEL_TITLE_H: u32 = 20;
const AXIS_H: u32 = 18;
const GAP: u32 = 14;
const FIG_TITLE_H: u32 = 30;
const LEGEND_H: u32 = 34;
/// Narrow grids still need room for the title and the legend line.
const MIN_W: u32 = 600;

impl HeatFigure {
    fn panel_size(&self) -> (u32, u32) {
        (
            LABEL_W + CELL_W * self.col_labels.len() as u32,
            PANEL_TITLE_H + CELL_H * self.row_labels.len() as u32 + AXIS_H,
        )
    }

    /// Pixel size of the whole figure; a pure function of the grid's shape.
    pub fn size(&self) -> (u32, u32) {
        let (pw, ph) = self.panel_size();
        let cols = self.panels.iter().map(Vec::len).max().unwrap_or(0).max(1) as u32;
        let rows = self.panels.len().max(1) as u32;
        (
            (GAP + cols * (pw + GAP)).max(MIN_W),
            FIG_TITLE_H + rows * (ph + GAP) + LEGEND_H,
        )
    }
}

/// Score colour: red (0) through yellow (0.5) to green (1), like the paper's heatmaps.
pub fn score_rgb(v: f64) -> (u8, u8, u8) {
    let v = if v.is_finite() {
        v.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let lerp = |a: u8, b: u8, t: f64| (a as f64 + (b as f64 - a as f64) * t).round() as u8;
    let (lo, hi, t) = if v < 0.5 {
        ((215, 48, 39), (254, 224, 139), v * 2.0)
    } else {
        ((254, 224, 139), (26, 152, 80), (v - 0.5) * 2.0)
    };
    (
        lerp(lo.0, hi.0, t),
        lerp(lo.1, hi.1, t),
        lerp(lo.2, hi.2, t),
    )
}

const MISSING: RGBColor = RGBColor(220, 220, 220);

/// Registers a TrueType font for PNG text, once per process: `$KVSCOPE_FONT`, else a few
/// common system locations. Returns whether one is available.
pub fn font_available() -> bool {
    static FONT: OnceLock<bool> = OnceLock::new();
    *FONT.get_or_init(|| {
        let mut candidates: Vec<PathBuf> = Vec::new();
        if let Some(p) = std::env::var_os("KVSCOPE_FONT") {
            candidates.push(p.into());
        }
        for p in [
            "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
            "/usr/share/fonts/TTF/DejaVuSans.ttf",
            "/usr/share/fonts/dejavu/DejaVuSans.ttf",
            "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
            "/usr/share/fonts/liberation-sans/LiberationSans-Regular.ttf",
            "/Library/Fonts/Arial.ttf",
            "/System/Library/Fonts/Supplemental/Arial.ttf",
            "C:\\Windows\\Fonts\\arial.ttf",
        ] {
            candidates.push(p.into());
        }
        for p in candidates {
            if let Ok(bytes) = std::fs::read(&p) {
                // plotters keeps fonts for the life of the process: leak the bytes once.
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                    return true;
                }
            }
        }
        false
    })
}

fn err<E: std::fmt::Debug>(what: &Path) -> impl FnOnce(E) -> anyhow::Error + '_ {
    move |e| anyhow!("cannot draw {}: {e:?}", what.display())
}

/// Draws text only when `on` (PNG without a font skips its labels).
#[allow(clippy::too_many_arguments)]
fn label<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    on: bool,
    s: &str,
    x: i32,
    y: i32,
    size: u32,
    h: HPos,
    colour: &RGBColor,
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    if !on {
        return Ok(());
    }
    let style = TextStyle::from(("sans-serif", size).into_font())
        .color(colour)
        .pos(Pos::new(h, VPos::Center));
    area.draw(&Text::new(s.to_string(), (x, y), style))
}

fn draw_heat<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    fig: &HeatFigure,
    text: bool,
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    root.fill(&WHITE)?;
    let (w, h) = fig.size();
    label(
        root,
        text,
        &fig.title,
        w as i32 / 2,
        15,
        16,
        HPos::Center,
        &BLACK,
    )?;
    let (pw, ph) = fig.panel_size();
    for (r, row) in fig.panels.iter().enumerate() {
        for (c, panel) in row.iter().enumerate() {
            let x0 = (GAP + c as u32 * (pw + GAP)) as i32;
            let y0 = (FIG_TITLE_H + r as u32 * (ph + GAP)) as i32;
            label(
                root,
                text,
                &panel.title,
                x0 + pw as i32 / 2,
                y0 + 9,
                12,
                HPos::Center,
                &BLACK,
            )?;
            let gy = y0 + PANEL_TITLE_H as i32;
            let gx = x0 + LABEL_W as i32;
            for (i, rl) in fig.row_labels.iter().enumerate() {
                let cy = gy + (i as u32 * CELL_H) as i32;
                label(
                    root,
                    text,
                    rl,
                    gx - 4,
                    cy + CELL_H as i32 / 2,
                    11,
                    HPos::Right,
                    &BLACK,
                )?;
                for j in 0..fig.col_labels.len() {
                    let cx = gx + (j as u32 * CELL_W) as i32;
                    let v = panel
                        .values
                        .get(i)
                        .and_then(|r| r.get(j))
                        .copied()
                        .flatten();
                    let fill = match v {
                        Some(v) => {
                            let (r, g, b) = score_rgb(v);
                            RGBColor(r, g, b)
                        }
                        None => MISSING,
                    };
                    root.draw(&Rectangle::new(
                        [(cx, cy), (cx + CELL_W as i32 - 1, cy + CELL_H as i32 - 1)],
                        fill.filled(),
                    ))?;
                    if let Some(v) = v {
                        let s = format!("{:.0}", v * 100.0);
                        label(
                            root,
                            text,
                            &s,
                            cx + CELL_W as i32 / 2,
                            cy + CELL_H as i32 / 2,
                            10,
                            HPos::Center,
                            &BLACK,
                        )?;
                    }
                }
            }
            let ay = gy + (fig.row_labels.len() as u32 * CELL_H) as i32 + AXIS_H as i32 / 2;
            for (j, cl) in fig.col_labels.iter().enumerate() {
                let cx = gx + (j as u32 * CELL_W + CELL_W / 2) as i32;
                label(root, text, cl, cx, ay, 10, HPos::Center, &BLACK)?;
            }
        }
    }
    // Legend: the colour scale from 0 to 100.
    let ly = h as i32 - LEGEND_H as i32 + 8;
    let lx = GAP as i32 + LABEL_W as i32;
    let steps = 20;
    for k in 0..steps {
        let (r, g, b) = score_rgb(k as f64 / (steps - 1) as f64);
        let x = lx + k * 8;
        root.draw(&Rectangle::new(
            [(x, ly), (x + 7, ly + 12)],
            RGBColor(r, g, b).filled(),
        ))?;
    }
    label(root, text, "0", lx - 4, ly + 6, 10, HPos::Right, &BLACK)?;
    label(
        root,
        text,
        "100   score (ROUGE-1 recall x 100); x: needle depth %, y: context tokens; grey: not run",
        lx + steps * 8 + 4,
        ly + 6,
        10,
        HPos::Left,
        &BLACK,
    )?;
    root.present()
}

/// Writes `stem.svg` and `stem.png`; returns the paths and whether the PNG has labels.
pub fn write_heatmap(fig: &HeatFigure, stem: &Path) -> Result<(Vec<PathBuf>, bool)> {
    let size = fig.size();
    let svg = stem.with_extension("svg");
    crate::output::write_with(&svg, "figure", |tmp| {
        let root = SVGBackend::new(tmp, size).into_drawing_area();
        draw_heat(&root, fig, true).map_err(err(&svg))
    })?;
    let png = stem.with_extension("png");
    let text = font_available();
    crate::output::write_with(&png, "figure", |tmp| {
        let root = BitMapBackend::new(tmp, size).into_drawing_area();
        draw_heat(&root, fig, text).map_err(err(&png))
    })?;
    Ok((vec![svg, png], text))
}

/// One line of a line plot: `(x, y)` points in order of x.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

/// One panel of a line plot.
#[derive(Debug, Clone, PartialEq)]
pub struct LinePanel {
    pub title: String,
    pub series: Vec<Series>,
    /// The full cache's score, drawn as a dashed horizontal line.
    pub reference: Option<f64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LineFigure {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub panels: Vec<LinePanel>,
}

const LP_W: u32 = 460;
const LP_H: u32 = 340;
const LP_LEFT: u32 = 52;
const LP_BOTTOM: u32 = 40;
const LP_TOP: u32 = 26;
const LP_RIGHT: u32 = 120;

impl LineFigure {
    pub fn size(&self) -> (u32, u32) {
        let n = self.panels.len().max(1) as u32;
        (n * LP_W, FIG_TITLE_H + LP_H)
    }
}

/// Line colours, one per method, distinguishable in print.
const PALETTE: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
];

/// A "nice" upper bound for an axis: 1, 2 or 5 times a power of ten, at least `v`.
pub fn nice_max(v: f64) -> f64 {
    if !(v.is_finite() && v > 0.0) {
        return 1.0;
    }
    let p = 10f64.powf(v.log10().floor());
    for m in [1.0, 2.0, 5.0, 10.0] {
        if m * p >= v * (1.0 - 1e-9) {
            return m * p;
        }
    }
    10.0 * p
}

fn draw_lines<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    fig: &LineFigure,
    text: bool,
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    root.fill(&WHITE)?;
    let (w, _) = fig.size();
    label(
        root,
        text,
        &fig.title,
        w as i32 / 2,
        15,
        16,
        HPos::Center,
        &BLACK,
    )?;
    let x_max = nice_max(
        fig.panels
            .iter()
            .flat_map(|p| &p.series)
            .flat_map(|s| &s.points)
            .map(|p| p.0)
            .fold(0.0, f64::max),
    );
    let grey = RGBColor(200, 200, 200);
    for (k, panel) in fig.panels.iter().enumerate() {
        let ox = (k as u32 * LP_W) as i32;
        let left = ox + LP_LEFT as i32;
        let right = ox + (LP_W - LP_RIGHT) as i32;
        let top = (FIG_TITLE_H + LP_TOP) as i32;
        let bottom = (FIG_TITLE_H + LP_H - LP_BOTTOM) as i32;
        let px =
            |x: f64| left + ((x / x_max).clamp(0.0, 1.0) * (right - left) as f64).round() as i32;
        let py = |y: f64| bottom - (y.clamp(0.0, 1.0) * (bottom - top) as f64).round() as i32;
        label(
            root,
            text,
            &panel.title,
            (left + right) / 2,
            top - 12,
            13,
            HPos::Center,
            &BLACK,
        )?;
        for t in 0..=5 {
            let y = t as f64 / 5.0;
            root.draw(&PathElement::new(vec![(left, py(y)), (right, py(y))], grey))?;
            label(
                root,
                text,
                &format!("{y:.1}"),
                left - 4,
                py(y),
                10,
                HPos::Right,
                &BLACK,
            )?;
            let x = x_max * t as f64 / 5.0;
            root.draw(&PathElement::new(
                vec![(px(x), bottom), (px(x), bottom + 4)],
                BLACK,
            ))?;
            label(
                root,
                text,
                &format!("{:.0}%", x * 100.0),
                px(x),
                bottom + 12,
                10,
                HPos::Center,
                &BLACK,
            )?;
        }
        root.draw(&PathElement::new(
            vec![(left, top), (left, bottom), (right, bottom)],
            BLACK,
        ))?;
        label(
            root,
            text,
            &fig.x_label,
            (left + right) / 2,
            bottom + 28,
            11,
            HPos::Center,
            &BLACK,
        )?;
        // The y label sits in the legend column: above the axis it would collide with
        // the panel title.
        label(
            root,
            text,
            &fig.y_label,
            right + 8,
            bottom + 28,
            10,
            HPos::Left,
            &BLACK,
        )?;
        if let Some(r) = panel.reference {
            let dark = RGBColor(60, 60, 60);
            let mut x = left;
            while x < right {
                let x1 = (x + 6).min(right);
                root.draw(&PathElement::new(vec![(x, py(r)), (x1, py(r))], dark))?;
                x += 10;
            }
            let ly = top + 10 + panel.series.len() as i32 * 16;
            root.draw(&PathElement::new(
                vec![(right + 8, ly), (right + 26, ly)],
                dark,
            ))?;
            label(
                root,
                text,
                "full cache",
                right + 30,
                ly,
                11,
                HPos::Left,
                &BLACK,
            )?;
        }
        for (i, s) in panel.series.iter().enumerate() {
            let colour = PALETTE[i % PALETTE.len()];
            let pts: Vec<(i32, i32)> = s.points.iter().map(|&(x, y)| (px(x), py(y))).collect();
            root.draw(&PathElement::new(pts.clone(), colour.stroke_width(2)))?;
            for p in pts {
                root.draw(&Circle::new(p, 3, colour.filled()))?;
            }
            let ly = top + 10 + i as i32 * 16;
            root.draw(&PathElement::new(
                vec![(right + 8, ly), (right + 26, ly)],
                colour.stroke_width(2),
            ))?;
            label(root, text, &s.name, right + 30, ly, 11, HPos::Left, &BLACK)?;
        }
    }
    root.present()
}

/// Writes `stem.svg` and `stem.png`; returns the paths and whether the PNG has labels.
pub fn write_lines(fig: &LineFigure, stem: &Path) -> Result<(Vec<PathBuf>, bool)> {
    let size = fig.size();
    let svg = stem.with_extension("svg");
    crate::output::write_with(&svg, "figure", |tmp| {
        let root = SVGBackend::new(tmp, size).into_drawing_area();
        draw_lines(&root, fig, true).map_err(err(&svg))
    })?;
    let png = stem.with_extension("png");
    let text = font_available();
    crate::output::write_with(&png, "figure", |tmp| {
        let root = BitMapBackend::new(tmp, size).into_drawing_area();
        draw_lines(&root, fig, text).map_err(err(&png))
    })?;
    Ok((vec![svg, png], text))
}

/// The heatmap as terminal text: one row per context length, a two-digit score per
/// depth (`--` not run), on a coloured background when `colour` (24-bit ANSI).
pub fn terminal_heatmap(
    title: &str,
    row_labels: &[String],
    col_labels: &[String],
    values: &[Vec<Option<f64>>],
    colour: bool,
) -> String {
    let mut s = format!("{title}\n");
    let lw = row_labels.iter().map(String::len).max().unwrap_or(0);
    s.push_str(&format!("{:>lw$} ", ""));
    for c in col_labels {
        s.push_str(&format!("{c:>4}"));
    }
    s.push('\n');
    for (i, rl) in row_labels.iter().enumerate() {
        s.push_str(&format!("{rl:>lw$} "));
        for j in 0..col_labels.len() {
            let v = values.get(i).and_then(|r| r.get(j)).copied().flatten();
            let cell = match v {
                Some(v) => format!("{:>3.0}", v * 100.0),
                None => " --".to_string(),
            };
            match (colour, v) {
                (true, Some(v)) => {
                    let (r, g, b) = score_rgb(v);
                    s.push_str(&format!(
                        " \x1b[48;2;{r};{g};{b}m\x1b[38;2;0;0;0m{cell}\x1b[0m"
                    ));
                }
                _ => s.push_str(&format!(" {cell}")),
            }
        }
        s.push('\n');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fig() -> HeatFigure {
        let panel = |t: &str| HeatPanel {
            title: t.into(),
            values: vec![
                vec![Some(1.0), Some(0.5), None],
                vec![Some(0.0), None, Some(0.25)],
            ],
        };
        HeatFigure {
            title: "NIAH".into(),
            row_labels: vec!["1024".into(), "2048".into()],
            col_labels: vec!["0".into(), "50".into(), "100".into()],
            panels: vec![
                vec![panel("full")],
                vec![panel("snapkv 32"), panel("snapkv 64")],
            ],
        }
    }

    #[test]
    fn colours_run_red_yellow_green() {
        assert_eq!(score_rgb(0.0), (215, 48, 39));
        assert_eq!(score_rgb(0.5), (254, 224, 139));
        assert_eq!(score_rgb(1.0), (26, 152, 80));
        assert_eq!(score_rgb(2.0), score_rgb(1.0));
        assert_eq!(score_rgb(f64::NAN), score_rgb(0.0));
    }

    #[test]
    fn figure_size_follows_the_grid() {
        let f = fig();
        let (pw, ph) = f.panel_size();
        assert_eq!(pw, LABEL_W + 3 * CELL_W);
        assert_eq!(ph, PANEL_TITLE_H + 2 * CELL_H + AXIS_H);
        assert_eq!(f.size(), (MIN_W, FIG_TITLE_H + 2 * (ph + GAP) + LEGEND_H));
        let wide = HeatFigure {
            panels: vec![vec![f.panels[0][0].clone(); 5]],
            ..f.clone()
        };
        assert_eq!(wide.size().0, GAP + 5 * (pw + GAP));
        assert_eq!(nice_max(0.13), 0.2);
        assert_eq!(nice_max(0.3), 0.5);
        assert_eq!(nice_max(1.0), 1.0);
        assert_eq!(nice_max(0.0), 1.0);
    }

    #[test]
    fn terminal_heatmap_plain_and_coloured() {
        let f = fig();
        let plain = terminal_heatmap(
            "t",
            &f.row_labels,
            &f.col_labels,
            &f.panels[0][0].values,
            false,
        );
        assert_eq!(
            plain,
            "t\n        0  50 100\n1024  100  50  --\n2048    0  --  25\n"
        );
        let c = terminal_heatmap(
            "t",
            &f.row_labels,
            &f.col_labels,
            &f.panels[0][0].values,
            true,
        );
        assert!(c.contains("\x1b[48;2;26;152;80m"));
        assert!(c.contains("\x1b[0m"));
    }
}

//! Where the user looks: pane focus, the cursors (layer, head, token, step), the head
//! statistic and the attention map's key range. No settings change here.

use super::{App, Cmd};
use crate::tui::action::{Action, Dir, Pane};
use crate::tui::stats::Stat;

pub(super) fn on_key(app: &mut App, a: Action) -> Vec<Cmd> {
    match a {
        Action::FocusNext => app.focus = Pane::ALL[(app.focus.index() + 1) % Pane::ALL.len()],
        Action::FocusPrev => {
            app.focus = Pane::ALL[(app.focus.index() + Pane::ALL.len() - 1) % Pane::ALL.len()]
        }
        Action::Show(p) => {
            app.focus = p;
            match p {
                Pane::Divergence => app.show_divergence = true,
                Pane::Attention => app.show_divergence = false,
                _ => {}
            }
        }
        Action::Move(d) => move_sel(app, d, false),
        Action::BigMove(d) => move_sel(app, d, true),
        Action::CycleStat => {
            let cyc = stats_cycle(app);
            let i = cyc.iter().position(|&s| s == app.stat).unwrap_or(0);
            app.stat = cyc[(i + 1) % cyc.len()];
        }
        Action::ZoomIn => zoom(app, true),
        Action::ZoomOut => zoom(app, false),
        Action::Pan(n) => pan(app, n),
        Action::TokenZoom => token_zoom(app),
        _ => {}
    }
    Vec::new()
}

/// The head statistics `s` cycles through: SRH with a profile, the live ones, lost mass
/// once a divergence analysis is in.
fn stats_cycle(app: &App) -> Vec<Stat> {
    let mut v = Vec::new();
    if app.ctl.has_profile {
        v.push(Stat::Srh);
    }
    v.extend(Stat::LIVE);
    if app.result.as_ref().is_some_and(|r| r.divergence.is_some()) {
        v.push(Stat::LostMass);
    }
    v
}

fn move_sel(app: &mut App, dir: Dir, big: bool) {
    let step = if big { 8 } else { 1 };
    let (nl, nh, nt) = (app.n_layers(), app.n_heads(), app.prompt_len().max(1));
    match (app.focus, dir) {
        (Pane::Divergence, Dir::Left) => move_step(app, -(step as i64)),
        (Pane::Divergence, Dir::Right) => move_step(app, step as i64),
        (Pane::Attention, Dir::Left) => pan(app, -1),
        (Pane::Attention, Dir::Right) => pan(app, 1),
        (Pane::Attention, Dir::Up) => zoom(app, true),
        (Pane::Attention, Dir::Down) => zoom(app, false),
        (Pane::Tokens, Dir::Left) => app.sel_token = app.sel_token.saturating_sub(step),
        (Pane::Tokens, Dir::Right) => app.sel_token = (app.sel_token + step).min(nt - 1),
        (Pane::Tokens, Dir::Up) => app.sel_token = app.sel_token.saturating_sub(16 * step),
        (Pane::Tokens, Dir::Down) => app.sel_token = (app.sel_token + 16 * step).min(nt - 1),
        (Pane::Budgets, Dir::Up) | (Pane::Budgets, Dir::Left) => {
            app.sel_layer = app.sel_layer.saturating_sub(step)
        }
        (Pane::Budgets, Dir::Down) | (Pane::Budgets, Dir::Right) => {
            app.sel_layer = (app.sel_layer + step).min(nl - 1)
        }
        // Head map (and the panes without a cursor): layers left/right, heads up/down.
        (_, Dir::Left) => app.sel_layer = app.sel_layer.saturating_sub(step),
        (_, Dir::Right) => app.sel_layer = (app.sel_layer + step).min(nl - 1),
        (_, Dir::Up) => app.sel_head = app.sel_head.saturating_sub(1),
        (_, Dir::Down) => app.sel_head = (app.sel_head + 1).min(nh - 1),
    }
}

/// Moves the Divergence pane's step by `delta`, within the analysis' steps.
fn move_step(app: &mut App, delta: i64) {
    let n = app
        .result
        .as_ref()
        .and_then(|r| r.divergence.as_ref())
        .map_or(0, |d| d.steps.len());
    if n == 0 {
        return;
    }
    let cur = app.step().unwrap_or(1) as i64;
    app.sel_step = Some((cur + delta).clamp(1, n as i64) as usize);
}

/// Zooms the attention map's key range in (halves it) or out (doubles it) about its
/// centre.
fn zoom(app: &mut App, inward: bool) {
    let len = app.prompt_len();
    if len == 0 {
        return;
    }
    let cur = if app.view_len == 0 { len } else { app.view_len };
    let centre = app.view_start + cur / 2;
    let new = if inward {
        (cur / 2).max(16.min(len))
    } else {
        (cur * 2).min(len)
    };
    if new >= len {
        app.view_start = 0;
        app.view_len = 0;
    } else {
        app.view_len = new;
        app.view_start = centre.saturating_sub(new / 2).min(len - new);
    }
}

/// Tokens `T` shows: one per cell on a map at least this wide (the full layout's map
/// is ~90 columns, the 80x24 tab's ~78). Also the query rows a token zoom asks the
/// worker for.
pub const TOKEN_ZOOM: usize = 64;

/// A token zoom's window: the query rows whose exact attention on the key range in
/// view the worker computes for the selected layer (every head of it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZoomWindow {
    pub layer: usize,
    pub rows: std::ops::Range<usize>,
    pub keys: std::ops::Range<usize>,
}

/// The exact rows the attention map needs now: when its key range is at most
/// [`TOKEN_ZOOM`] tokens on a prompt whose block maps hold blocks of several tokens
/// (above 256 tokens), the [`TOKEN_ZOOM`] query rows ending at the key range's end
/// (the tokens at and after the range attending back over it, the diagonal included)
/// on those keys, in the selected layer. `None` otherwise (block means suffice, or a
/// map of one token per block is exact already).
pub fn zoom_window(app: &App) -> Option<ZoomWindow> {
    let s = app.snapshot.as_ref()?;
    let len = app.prompt_len();
    let bs = s.maps.get(app.sel_layer)?.first()?.block_size;
    if bs <= 1 || app.view_len == 0 || app.view_len > TOKEN_ZOOM || app.view_len >= len {
        return None;
    }
    let (ks, ke) = (app.view_start, (app.view_start + app.view_len).min(len));
    Some(ZoomWindow {
        layer: app.sel_layer,
        rows: ke.saturating_sub(TOKEN_ZOOM)..ke,
        keys: ks..ke,
    })
}

/// `T`: the key range becomes [`TOKEN_ZOOM`] tokens centred on the token cursor; again
/// goes back to the range shown before.
fn token_zoom(app: &mut App) {
    let len = app.prompt_len();
    if len == 0 {
        return;
    }
    if let Some((s, l)) = app.zoom_back.take() {
        app.view_start = s;
        app.view_len = l;
        return;
    }
    app.zoom_back = Some((app.view_start, app.view_len));
    if TOKEN_ZOOM >= len {
        app.view_start = 0;
        app.view_len = 0;
    } else {
        app.view_len = TOKEN_ZOOM;
        app.view_start = app
            .sel_token
            .saturating_sub(TOKEN_ZOOM / 2)
            .min(len - TOKEN_ZOOM);
    }
}

/// Pans the key range by a quarter of its width per step.
fn pan(app: &mut App, steps: i64) {
    let len = app.prompt_len();
    if app.view_len == 0 || len == 0 {
        return;
    }
    let step = (app.view_len / 4).max(1) as i64;
    let max = (len - app.view_len) as i64;
    app.view_start = (app.view_start as i64 + steps * step).clamp(0, max) as usize;
}

//! What the worker sends back: phases, the snapshot after prefill, outcomes and their
//! divergence analyses, errors. Older generations are dropped so one screen never
//! mixes two.

use super::{App, Cmd};
use crate::tui::msg::{FromWorker, Phase};
use crate::tui::stats::Stat;

pub(super) fn on_worker(app: &mut App, m: FromWorker) -> Vec<Cmd> {
    match m {
        FromWorker::ZoomRows { zoom, ms } => {
            app.zoom_rows = Some((zoom, ms));
            Vec::new()
        }
        FromWorker::Phase(p) => {
            app.phase = p;
            Vec::new()
        }
        FromWorker::Ready(s) => {
            app.ctl.has_profile = s.srh_scores.is_some();
            if app.ctl.has_profile {
                app.stat = Stat::Srh;
                // Nothing was edited yet (the worker has no settings): the method the
                // start-up picked for want of a profile can still become compresskv.
                if app.ctl.prefer_compresskv && app.gen == 0 {
                    app.settings.method = crate::eviction::compresskv::METHOD;
                    app.ctl.defaults.method = crate::eviction::compresskv::METHOD;
                    app.notice =
                        Some("found a profile for this model: starting with compresskv".into());
                }
            }
            // Start on the last scored token (the window is always kept: dull).
            app.sel_token = s
                .prompt_tokens
                .len()
                .saturating_sub(app.settings.window + 1);
            app.snapshot = Some(s);
            app.zoom_rows = None;
            app.ctl.zoom_sent = None;
            app.phase = Phase::Idle;
            // The worker has no settings yet; give it the current ones at once.
            vec![Cmd::FlushNow]
        }
        FromWorker::Result(o) => {
            // Older than what is shown, or from a future we never asked for: drop it,
            // so one screen never mixes two generations.
            let newer = app.result.as_ref().is_none_or(|r| o.gen >= r.gen);
            if newer && o.gen <= app.gen {
                if o.gen == app.gen {
                    app.error = None;
                }
                if let Some((g, pins)) = app.ctl.rescue_pending.take() {
                    if g == o.gen {
                        app.notice = Some(match o.agreement.first_divergence {
                            None => {
                                format!("rescue {pins:?}: the output now matches the full cache")
                            }
                            Some(i) => format!(
                                "rescue {pins:?}: still diverges, now at token {i} ({:.0}% match)",
                                o.agreement.token_match * 100.0
                            ),
                        });
                    } else if g > o.gen {
                        app.ctl.rescue_pending = Some((g, pins));
                    }
                }
                app.result = Some(o);
            }
            Vec::new()
        }
        FromWorker::Divergence { gen, view } => {
            if let Some(r) = app.result.as_mut().filter(|r| r.gen == gen) {
                r.divergence = Some(view);
            }
            Vec::new()
        }
        FromWorker::AttnErrors { gen, errors } => {
            let d = app.result.as_mut().filter(|r| r.gen == gen);
            if let Some(d) = d.and_then(|r| r.divergence.as_mut()) {
                std::sync::Arc::make_mut(d).attn_err = Some(errors);
                app.notice =
                    Some("attention-output error per layer: under the lost-mass grid".into());
            }
            Vec::new()
        }
        FromWorker::Failed { gen, error } => {
            if gen == app.gen {
                app.error = Some(error);
            }
            Vec::new()
        }
        FromWorker::Error(e) => {
            app.error = Some(e);
            Vec::new()
        }
        FromWorker::Notice(n) => {
            app.notice = Some(n);
            Vec::new()
        }
        FromWorker::ReportLoaded { settings, note } => {
            let cmds = app.edit(|s| *s = *settings);
            if app.error.is_none() {
                app.notice = Some(note);
            }
            cmds
        }
        m @ (FromWorker::ProfileProgress(_)
        | FromWorker::ProfileMade { .. }
        | FromWorker::ProfileStopped { .. }) => super::profile::on_worker(app, m),
        FromWorker::Fatal(e) => {
            app.error = Some(e);
            app.phase = Phase::Stopped;
            Vec::new()
        }
    }
}

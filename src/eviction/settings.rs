//! The settings' defaults (METHOD.md's) and their validation against the registry's
//! knobs. (The struct itself is in `types.rs`, which every method reads; this file sits
//! above the registry, which it consults.)

use super::registry;
use super::types::{Allocator, KnobValue, Pooling, Settings};
use crate::trace::{Dims, W_MAX};
use anyhow::{bail, Result};

impl Default for Settings {
    fn default() -> Self {
        Settings {
            method: crate::eviction::compresskv::METHOD,
            budget: 128,
            window: 8,
            kernel: 5,
            pooling: Pooling::Avg,
            first_k: 4,
            adakv_floor: 0.2,
            pyramid_beta: 20,
            allocator: None,
            layer_budgets: None,
            pin_keep: Vec::new(),
            pin_evict: Vec::new(),
            cake_cascade: None,
            cake_gamma: None,
            cake_tau1: None,
            cake_tau2: None,
            evict_sliding: None,
            headkv_beta: None,
            headkv_source: None,
            headkv_temp: None,
            knorm_skip_layers: None,
            random_seed: None,
        }
    }
}

impl Settings {
    /// The value in force of the registry knob `name` (its default when unset); `None`
    /// for a name no method or allocator registers.
    pub fn knob(&self, name: &str) -> Option<KnobValue> {
        registry::knob(name).map(|k| k.get(self))
    }

    /// A number knob's value in force (0 for a name that is not a number knob).
    pub fn knob_f64(&self, name: &str) -> f64 {
        self.knob(name).and_then(|v| v.as_f64()).unwrap_or(0.0)
    }

    /// A flag knob's value in force.
    pub fn knob_bool(&self, name: &str) -> bool {
        self.knob(name).and_then(|v| v.as_bool()).unwrap_or(false)
    }

    /// Checks every knob against its valid range for a model of shape `dims`. Each error
    /// is one line naming the knob, the valid range and the value given.
    pub fn validate(&self, dims: &Dims) -> Result<()> {
        if dims.n_layers == 0
            || dims.n_heads == 0
            || dims.n_kv_heads == 0
            || dims.head_dim == 0
            || !dims.n_heads.is_multiple_of(dims.n_kv_heads)
        {
            bail!(
                "model shape is invalid ({} layers, {} query heads, {} KV heads, head_dim {}): \
                 all must be positive and the KV heads must divide the query heads",
                dims.n_layers,
                dims.n_heads,
                dims.n_kv_heads,
                dims.head_dim
            );
        }
        let w = self.window;
        if w == 0 || w > W_MAX {
            bail!("window must be between 1 and {W_MAX} tokens; got {w}");
        }
        if self.budget == 0 {
            bail!("budget must be a positive number of tokens per layer, at least the window ({w}); got 0");
        }
        if self.budget < w {
            bail!(
                "budget must be at least the window ({w} tokens), which is always kept; got {}",
                self.budget
            );
        }
        for k in registry::all_knobs() {
            k.validate(self, dims)?;
        }
        // A method that sets per-head budgets from its own pool reads no layer budgets:
        // an allocator or explicit budgets would be ignored while the report named them.
        let def = self.method.def();
        if def.keeps == super::types::Keeps::OwnHeads
            && (self.allocator.is_some() || self.layer_budgets.is_some())
        {
            let what = if self.layer_budgets.is_some() {
                "--layer-budgets"
            } else {
                "--allocator"
            };
            bail!(
                "{} sets per-head budgets from its own pool and uses no layer allocator; \
                 drop {what} (or pick another method)",
                def.name
            );
        }
        match (self.allocator, &self.layer_budgets) {
            (Some(a), None) if a == Allocator::Manual => bail!(
                "the manual allocator needs explicit layer budgets (--layer-budgets a,b,c,...), \
                 one per layer ({} layers)",
                dims.n_layers
            ),
            (Some(a), Some(_)) if a != Allocator::Manual => bail!(
                "explicit layer budgets conflict with the {a} allocator; give one or the other"
            ),
            _ => {}
        }
        if let Some(list) = &self.layer_budgets {
            if list.len() != dims.n_layers {
                bail!(
                    "layer budgets list has {} entries; the model has {} layers (give one per layer)",
                    list.len(),
                    dims.n_layers
                );
            }
            if let Some((l, b)) = list.iter().enumerate().find(|(_, &b)| b < w) {
                bail!(
                    "layer {l} budget is {b}; each layer budget must be at least the window ({w} tokens)"
                );
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIMS: Dims = Dims {
        n_layers: 3,
        n_heads: 4,
        n_kv_heads: 2,
        head_dim: 8,
    };

    fn err(s: Settings) -> String {
        s.validate(&DIMS).unwrap_err().to_string()
    }

    #[test]
    fn defaults_are_method_md_defaults_and_valid() {
        let s = Settings::default();
        assert_eq!(s.method, crate::eviction::compresskv::METHOD);
        assert_eq!(
            (s.budget, s.window, s.kernel, s.first_k, s.pyramid_beta),
            (128, 8, 5, 4, 20)
        );
        assert_eq!(s.pooling, Pooling::Avg);
        assert_eq!(s.adakv_floor, 0.2);
        assert_eq!(s.effective_allocator(), Allocator::ErrorAware);
        let dims = Dims {
            n_layers: 30,
            n_heads: 9,
            n_kv_heads: 3,
            head_dim: 64,
        };
        s.validate(&dims).unwrap();
    }

    #[test]
    fn each_bad_knob_has_its_own_message() {
        let d = Settings::default;
        assert!(err(Settings { budget: 0, ..d() }).contains("budget must be a positive"));
        assert!(err(Settings { budget: 7, ..d() }).contains("at least the window (8"));
        assert!(err(Settings { window: 0, ..d() }).contains("between 1 and 64"));
        assert!(err(Settings {
            window: 65,
            budget: 200,
            ..d()
        })
        .contains("got 65"));
        assert!(err(Settings { kernel: 0, ..d() }).contains("odd number"));
        assert!(err(Settings { kernel: 4, ..d() }).contains("got 4"));
        assert!(err(Settings { first_k: 0, ..d() }).contains("between 1 and the model's 4"));
        assert!(err(Settings { first_k: 5, ..d() }).contains("got 5"));
        // Other methods ignore first-k beyond the head count (but not 0).
        let snap = Settings {
            method: crate::eviction::snapkv::METHOD,
            first_k: 5,
            ..d()
        };
        snap.validate(&DIMS).unwrap();
        assert!(err(Settings { first_k: 0, ..snap }).contains("between 1 and the model's 4"));
        assert!(err(Settings {
            adakv_floor: -0.1,
            ..d()
        })
        .contains("between 0 and 1"));
        assert!(err(Settings {
            adakv_floor: 1.5,
            ..d()
        })
        .contains("got 1.5"));
        assert!(err(Settings {
            adakv_floor: f32::NAN,
            ..d()
        })
        .contains("between 0 and 1"));
        assert!(err(Settings {
            pyramid_beta: 0,
            ..d()
        })
        .contains("beta"));
        let wrong_len = Settings {
            layer_budgets: Some(vec![64, 64]),
            ..d()
        };
        assert!(err(wrong_len).contains("has 2 entries; the model has 3 layers"));
        let small = Settings {
            layer_budgets: Some(vec![64, 7, 64]),
            ..d()
        };
        assert!(err(small).contains("layer 1 budget is 7"));
        let manual = Settings {
            allocator: Some(Allocator::Manual),
            ..d()
        };
        assert!(err(manual).contains("--layer-budgets"));
        let clash = Settings {
            allocator: Some(Allocator::Pyramid),
            layer_budgets: Some(vec![8, 8, 8]),
            ..d()
        };
        assert!(err(clash).contains("conflict with the pyramid allocator"));
        let bad_dims = Dims {
            n_kv_heads: 3,
            ..DIMS
        };
        assert!(d().validate(&bad_dims).is_err());
    }

    #[test]
    fn boundary_values_are_accepted() {
        let d = Settings::default;
        for s in [
            Settings { budget: 8, ..d() },
            Settings {
                window: 64,
                budget: 64,
                ..d()
            },
            Settings {
                window: 1,
                budget: 1,
                ..d()
            },
            Settings { kernel: 1, ..d() },
            Settings { first_k: 4, ..d() },
            Settings {
                adakv_floor: 0.0,
                ..d()
            },
            Settings {
                adakv_floor: 1.0,
                ..d()
            },
            Settings {
                layer_budgets: Some(vec![8, 100, 8]),
                ..d()
            },
        ] {
            s.validate(&DIMS).unwrap();
        }
    }

    #[test]
    fn layer_budgets_imply_manual() {
        let s = Settings {
            layer_budgets: Some(vec![8, 8, 8]),
            ..Settings::default()
        };
        assert_eq!(s.effective_allocator(), Allocator::Manual);
        let s = Settings {
            method: crate::eviction::pyramidkv::METHOD,
            ..Settings::default()
        };
        assert_eq!(s.effective_allocator(), Allocator::Pyramid);
        let s = Settings {
            method: crate::eviction::pyramidkv::METHOD,
            allocator: Some(Allocator::Uniform),
            ..Settings::default()
        };
        assert_eq!(s.effective_allocator(), Allocator::Uniform);
    }

    #[test]
    fn serializes_names_as_strings() {
        let v = serde_json::to_value(Settings::default()).unwrap();
        assert_eq!(v["method"], "compresskv");
        assert_eq!(v["pooling"], "avg");
        assert!(v["allocator"].is_null());
        let back: Settings = serde_json::from_value(v).unwrap();
        assert_eq!(back, Settings::default());
    }
}

//! Offline profiles (SRH scores, layer errors): format and validation.

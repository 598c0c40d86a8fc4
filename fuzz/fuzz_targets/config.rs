#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use smtp_oauth_relay::config::{parse, ConfigError};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // parse reads the files a config names (secrets, certificates): keep the fuzzer away
    // from device and process files, which could block or never end.
    if ["/dev", "/proc", "/sys"].iter().any(|p| text.contains(p)) {
        return;
    }
    match parse(text, Path::new("fuzz.toml")) {
        Ok(config) => {
            // Whatever validation lets through is usable: limits at their minimums or above.
            assert!(config.limits.max_connections >= 1);
            assert!(config.limits.max_command_line >= 512);
            assert!(config.limits.max_data_line >= 1000);
            assert!(!config.timeouts.command.is_zero());
            for asset in &config.assets {
                assert!(config.asset(&asset.name).is_some());
            }
        }
        Err(ConfigError::Invalid { problems, .. }) => {
            assert!(!problems.is_empty(), "invalid without a reason");
            // Every problem points into the text (line numbers start at 1).
            let lines = text.lines().count().max(1) + 1;
            for problem in &problems {
                if let Some(line) = problem.line {
                    assert!((1..=lines).contains(&line), "line {line} of {lines}");
                }
                assert!(!problem.message.is_empty());
            }
        }
        Err(ConfigError::Read { .. }) => panic!("parse does not read the config file itself"),
    }
});

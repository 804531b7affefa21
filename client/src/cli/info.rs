//! `sluice info`: what the broker says about itself (`GetBrokerInfo`).

use sluice_client::Client;

use super::exit::Failure;
use super::{human, json, print, print_json};

/// Runs the command.
pub async fn run(client: &Client, as_json: bool) -> Result<(), Failure> {
    let info = client.broker_info().await?;
    if as_json {
        return print_json(&json::broker_info(&info));
    }
    print(&human::broker_info(&info))
}

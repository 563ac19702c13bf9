//! Topic creation.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::ClientConfig;

use crate::Error;

/// Creates `topic` with `partitions` partitions and `replication` replicas
/// (1 on the test broker), waiting up to `timeout` for the broker.
pub async fn create_topic(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    replication: i32,
    timeout: Duration,
) -> Result<(), Error> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .map_err(Error::kafka("admin client"))?;
    let options = AdminOptions::new()
        .request_timeout(Some(timeout))
        .operation_timeout(Some(timeout));
    let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(replication));
    let results = admin
        .create_topics([&new], &options)
        .await
        .map_err(Error::kafka(format!("creating topic `{topic}`")))?;
    for result in results {
        if let Err((topic, code)) = result {
            return Err(Error::CreateTopic { topic, code });
        }
    }
    Ok(())
}

//! Lease tokens from deliveries, so callers do not rebuild them by hand.
//!
//! A trait rather than inherent methods because `Delivery` is a generated
//! type from another crate.

use crate::proto::{AckItem, Delivery, LeaseRef, NackAction, NackItem};

/// Helpers on a [`Delivery`] for settling it.
pub trait DeliveryExt {
    /// The lease (task id, attempt and the lease's secret token) that ack,
    /// nack and extend quote.
    fn lease(&self) -> LeaseRef;

    /// An ack of this delivery, without a result.
    fn ack_item(&self) -> AckItem {
        AckItem {
            lease: Some(self.lease()),
            ..AckItem::default()
        }
    }

    /// A nack of this delivery with `action` and the failure's text.
    fn nack_item(&self, action: NackAction, error: impl Into<String>) -> NackItem {
        NackItem {
            lease: Some(self.lease()),
            action: action.into(),
            error: error.into(),
            ..NackItem::default()
        }
    }
}

impl DeliveryExt for Delivery {
    fn lease(&self) -> LeaseRef {
        LeaseRef {
            // A delivery without a task is malformed; the broker will refuse
            // the empty id as UNKNOWN_TASK, which is the right answer.
            task_id: self.task.as_ref().map(|t| t.id.clone()).unwrap_or_default(),
            attempt: self.attempt,
            lease_token: self.lease_token.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::Task;

    #[test]
    fn lease_quotes_task_id_attempt_and_token() {
        let d = Delivery {
            task: Some(Task {
                id: "t1".into(),
                ..Task::default()
            }),
            attempt: 3,
            lease_token: "secret".into(),
            ..Delivery::default()
        };
        assert_eq!(
            d.lease(),
            LeaseRef {
                task_id: "t1".into(),
                attempt: 3,
                lease_token: "secret".into(),
            }
        );
        assert_eq!(d.ack_item().lease, Some(d.lease()));
        let nack = d.nack_item(NackAction::Drop, "boom");
        assert_eq!(nack.action, NackAction::Drop as i32);
        assert_eq!(nack.error, "boom");
    }
}

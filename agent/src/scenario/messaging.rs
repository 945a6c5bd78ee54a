//! The messaging scenario (amoc Livebook demo).
#![allow(missing_docs)]
use crate::scenario::*;
use murmuration_crds::loadtest::MessagingScenario;
pub struct MessagingUsers;
impl MessagingUsers {
    pub fn new(_m: &MessagingScenario) -> Result<MessagingUsers, String> {
        Ok(MessagingUsers)
    }
}
impl Scenario for MessagingUsers {
    type State = ();
    async fn init(&self, _c: &InitContext) -> Result<(), ScenarioError> {
        Ok(())
    }
    async fn start(&self, _u: &mut User, _s: &()) -> Result<(), ScenarioError> {
        Ok(())
    }
}

// Tests that import SecureMessagingTesting see everything SecureMessaging brings.
@_exported import SecureMessaging

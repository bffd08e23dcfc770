// One import for a leader or a collaborator program: `import SecureMessaging` brings the
// cluster (Leader, Collaborator, membership, routing), the smsg/1 sessions under it, TLS
// configuration and certificates, ByteBuffer and the other NIO types in their signatures,
// Logger, and ServiceGroup with the signals it stops on. (Tracing's `withSpan` stays in
// swift-distributed-tracing's Tracing, for the programs that trace.)
@_exported import Cluster
@_exported import Logging
@_exported import Messaging
@_exported import NIOCore
@_exported import SecureTransport
@_exported import ServiceLifecycle
@_exported import UnixSignals

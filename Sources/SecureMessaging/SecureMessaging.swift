// One import for a leader or a collaborator program: `import SecureMessaging` brings the
// cluster (Leader, Collaborator, membership, routing), the smsg/1 sessions under it, TLS
// configuration and certificates, ByteBuffer and the other NIO types in their signatures, and
// Logger.
@_exported import Cluster
@_exported import Logging
@_exported import Messaging
@_exported import NIOCore
@_exported import SecureTransport

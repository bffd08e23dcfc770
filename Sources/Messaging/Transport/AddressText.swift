package import NIOCore

/// "host:port", with brackets around an IPv6 host: `127.0.0.1:7443`, `[::1]:7443`.
///
/// - Parameters:
///   - host: A host name or an IPv4 or IPv6 address.
///   - port: The port.
/// - Returns: The text.
package func addressText(host: String, port: Int) -> String {
    host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)"
}

extension SocketAddress {
    /// "address:port" for an IP address (`127.0.0.1:51234`, `[::1]:51234`); NIO's own
    /// description for anything else.
    package var addressText: String {
        guard let ip = self.ipAddress, let port = self.port else { return "\(self)" }
        return Messaging.addressText(host: ip, port: port)
    }
}

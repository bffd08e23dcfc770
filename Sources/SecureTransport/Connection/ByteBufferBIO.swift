internal import COpenSSL
import NIOCore

/// The BIO under every ``TLSConnection``: OpenSSL reads ciphertext straight out of the
/// connection's inbound `ByteBuffer` and writes ciphertext straight into its outbound one.
///
/// This is a memory BIO without the extra copy: a plain `BIO_s_mem` would need one copy in
/// (`BIO_write`) and one out (`BIO_read`) on top of OpenSSL's own. Reading from an empty
/// buffer asks OpenSSL to retry (`SSL_ERROR_WANT_READ`) until the transport has ended, after
/// which it reports end of file.
enum ByteBufferBIO {
    /// The method table, made once per process and never freed.
    nonisolated(unsafe) static let method: OpaquePointer = {
        let type = BIO_get_new_index() | BIO_TYPE_SOURCE_SINK
        guard let method = BIO_meth_new(type, "smsg bytebuffer") else {
            fatalError("OpenSSL could not allocate a BIO method")
        }
        BIO_meth_set_write(method, bioWrite)
        BIO_meth_set_read(method, bioRead)
        BIO_meth_set_puts(method, bioPuts)
        BIO_meth_set_ctrl(method, bioControl)
        BIO_meth_set_create(method, bioCreate)
        BIO_meth_set_destroy(method, bioDestroy)
        return method
    }()

    /// Makes a BIO whose data pointer is `connection` (unretained: the connection owns the
    /// `SSL`, which owns the BIO).
    static func make(for connection: TLSConnection) -> OpaquePointer? {
        guard let bio = BIO_new(self.method) else { return nil }
        BIO_set_data(bio, Unmanaged.passUnretained(connection).toOpaque())
        BIO_set_init(bio, 1)
        return bio
    }
}

private func connection(of bio: OpaquePointer) -> TLSConnection? {
    guard let data = BIO_get_data(bio) else { return nil }
    return Unmanaged<TLSConnection>.fromOpaque(data).takeUnretainedValue()
}

private let bioWrite: @convention(c) (OpaquePointer?, UnsafePointer<CChar>?, CInt) -> CInt = { bio, data, length in
    guard let bio, let data, length >= 0, let connection = connection(of: bio) else { return -1 }
    smsg_BIO_clear_retry_flags(bio)
    connection.appendCiphertext(UnsafeRawBufferPointer(start: data, count: Int(length)))
    return length
}

private let bioRead: @convention(c) (OpaquePointer?, UnsafeMutablePointer<CChar>?, CInt) -> CInt = {
    bio,
    out,
    capacity in
    guard let bio, let out, capacity >= 0, let connection = connection(of: bio) else { return -1 }
    smsg_BIO_clear_retry_flags(bio)
    let copied = connection.takeCiphertext(into: UnsafeMutableRawBufferPointer(start: out, count: Int(capacity)))
    if copied > 0 {
        return CInt(copied)
    }
    if connection.transportEnded {
        return 0
    }
    smsg_BIO_set_retry_read(bio)
    return -1
}

private let bioPuts: @convention(c) (OpaquePointer?, UnsafePointer<CChar>?) -> CInt = { bio, text in
    guard let text else { return -1 }
    var length = 0
    while text[length] != 0 { length += 1 }
    return bioWrite(bio, text, CInt(length))
}

private let bioControl: @convention(c) (OpaquePointer?, CInt, Int, UnsafeMutableRawPointer?) -> Int = {
    bio,
    command,
    argument,
    _ in
    guard let bio else { return 0 }
    switch command {
    case BIO_CTRL_FLUSH:
        // Ciphertext is already in the outbound buffer; the handler decides when it leaves.
        return 1
    case BIO_CTRL_GET_CLOSE:
        return Int(BIO_get_shutdown(bio))
    case BIO_CTRL_SET_CLOSE:
        BIO_set_shutdown(bio, CInt(argument))
        return 1
    case BIO_CTRL_PENDING:
        return connection(of: bio)?.pendingCiphertextCount ?? 0
    case BIO_CTRL_EOF:
        guard let connection = connection(of: bio) else { return 1 }
        return connection.transportEnded && connection.pendingCiphertextCount == 0 ? 1 : 0
    default:
        return 0
    }
}

private let bioCreate: @convention(c) (OpaquePointer?) -> CInt = { bio in
    guard let bio else { return 0 }
    BIO_set_shutdown(bio, 1)
    return 1
}

private let bioDestroy: @convention(c) (OpaquePointer?) -> CInt = { bio in
    guard let bio else { return 0 }
    BIO_set_data(bio, nil)
    BIO_set_init(bio, 0)
    return 1
}

// swift-tools-version:6.0
import PackageDescription

/// Ferry: a data-transfer and storage fabric for a supercomputing internet.
/// Dependencies flow one way: CLI → Daemon → Transfer → C modules (GlobalFS goes between
/// Daemon and Transfer when it arrives).
let package = Package(
    name: "Ferry",
    platforms: [.macOS(.v14)],
    products: [
        .executable(name: "ferry", targets: ["CLI"]),
        .library(name: "Transfer", targets: ["Transfer"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/groue/GRDB.swift", from: "7.10.0"),
        .package(url: "https://github.com/hummingbird-project/hummingbird", from: "2.28.1"),
    ],
    targets: [
        // System-library shims: each a tiny C target that includes the Debian header and
        // exposes what Swift cannot import directly (macros, variadic syscalls).
        .target(name: "CLiburing", linkerSettings: [.linkedLibrary("uring")]),
        .target(name: "CZstd", linkerSettings: [.linkedLibrary("zstd")]),
        .target(name: "CXXHash"),
        .target(name: "COpenSSL", linkerSettings: [.linkedLibrary("ssl"), .linkedLibrary("crypto")]),
        .target(
            name: "Transfer",
            dependencies: ["CLiburing", "CZstd", "CXXHash", "COpenSSL"]
        ),
        // The center's service: persistent job queue (SQLite via GRDB), runner, API.
        .target(
            name: "Daemon",
            dependencies: [
                "Transfer",
                .product(name: "GRDB", package: "GRDB.swift"),
                .product(name: "Hummingbird", package: "hummingbird"),
            ]
        ),
        .executableTarget(
            name: "CLI",
            dependencies: ["Transfer", "Daemon", .product(name: "ArgumentParser", package: "swift-argument-parser")]
        ),
        .testTarget(name: "TransferTests", dependencies: ["Transfer"]),
        .testTarget(name: "EndToEndTests", dependencies: ["Transfer"]),
        .testTarget(name: "DaemonTests", dependencies: ["Daemon"]),
    ],
    swiftLanguageModes: [.v5]
)

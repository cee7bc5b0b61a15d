"""Start a node, print its peer ID and multiaddrs, stop it."""
import kwaai

with kwaai.Node.start(listen_addrs=["/ip4/127.0.0.1/tcp/0"]) as node:
    print("peer id:", node.peer_id)
    for addr in node.listen_addrs:
        print("listening on:", addr)

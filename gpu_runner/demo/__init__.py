"""A procedurally generated audio+video world the demo model learns, and measurements that check its clips."""

"""The on-robot agent: policy serving, grasp log, detector, lifecycle, sockets."""

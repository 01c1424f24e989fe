# Public ALB: everything to freeside, the dixie host to dixie. finn has no target group: it is internal only.
resource "aws_lb" "public" {
  name               = "${local.prefix}-public"
  load_balancer_type = "application"
  internal           = false
  security_groups    = [aws_security_group.alb.id]
  subnets            = module.vpc.public_subnets
  # A call that does not stream sends nothing until it answers, and freeside may legitimately take longer than the ALB's
  # default 60 s: a paid x402 invoke waits for the facilitator's /verify (X402__FacilitatorTimeoutSeconds, 60 s), finn
  # (60 s) and /settle (60 s), and a plain invoke answers its own 504 when finn times out at 60 s. At the default the
  # ALB cut those calls first and answered with its own HTML 504. Streams send a keepalive every 15 s.
  idle_timeout = 240
}

locals {
  # How long a task taken off the ALB (a rollout, a scale-in) may finish its calls before ECS sends it SIGTERM. AWS's
  # default, 300 s, made every rollout wait 5 minutes of the deploy's 600 s per service. A call that does not stream
  # ends within 180 s (a paid x402 invoke: /verify, finn and /settle, 60 s each; the ALB itself cuts any call silent
  # for idle_timeout); a stream still open at the end is cut whatever the delay, and its client reconnects.
  deregistration_delay = 200
}

resource "aws_lb_target_group" "freeside" {
  name        = "${local.prefix}-freeside"
  port        = local.ports.freeside
  protocol    = "HTTP"
  target_type = "ip"
  vpc_id      = module.vpc.vpc_id

  deregistration_delay = local.deregistration_delay

  health_check {
    path                = "/health/live" # liveness: see local.health_paths in ecs.tf
    matcher             = "200"
    interval            = 15
    timeout             = 5
    healthy_threshold   = 2
    unhealthy_threshold = 3
  }
}

resource "aws_lb_target_group" "dixie" {
  name        = "${local.prefix}-dixie"
  port        = local.ports.dixie
  protocol    = "HTTP"
  target_type = "ip"
  vpc_id      = module.vpc.vpc_id

  deregistration_delay = local.deregistration_delay

  health_check {
    path                = "/health/live"
    matcher             = "200"
    interval            = 15
    timeout             = 5
    healthy_threshold   = 2
    unhealthy_threshold = 3
  }
}

resource "aws_lb_listener" "http" {
  load_balancer_arn = aws_lb.public.arn
  port              = 80
  protocol          = "HTTP"

  default_action {
    type = "redirect"
    redirect {
      port        = "443"
      protocol    = "HTTPS"
      status_code = "HTTP_301"
    }
  }
}

resource "aws_lb_listener" "https" {
  load_balancer_arn = aws_lb.public.arn
  port              = 443
  protocol          = "HTTPS"
  ssl_policy        = "ELBSecurityPolicy-TLS13-1-2-2021-06"
  certificate_arn   = var.certificate_arn

  default_action {
    type             = "forward"
    target_group_arn = aws_lb_target_group.freeside.arn
  }
}

# /metrics (Prometheus) is for scrapers inside the VPC, not the internet: the public listener answers it with a 404
# before any host rule forwards it.
resource "aws_lb_listener_rule" "metrics_internal" {
  listener_arn = aws_lb_listener.https.arn
  priority     = 1

  action {
    type = "fixed-response"
    fixed_response {
      content_type = "application/json"
      status_code  = "404"
      message_body = "{\"error\":\"NOT_FOUND\",\"message\":\"/metrics is served inside the VPC only.\"}"
    }
  }

  condition {
    path_pattern {
      values = ["/metrics", "/metrics/*"]
    }
  }
}

resource "aws_lb_listener_rule" "dixie_host" {
  listener_arn = aws_lb_listener.https.arn
  priority     = 10

  action {
    type             = "forward"
    target_group_arn = aws_lb_target_group.dixie.arn
  }

  condition {
    host_header {
      values = [var.dixie_host]
    }
  }
}
